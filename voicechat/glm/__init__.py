"""GLM-4-Voice: text tokenizer, prompt, language-model backends, speech tokenizer and decoder."""
