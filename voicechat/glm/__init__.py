"""GLM-4-Voice: speech tokenizer, language model backends and the speech decoder."""
