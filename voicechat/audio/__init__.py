"""Audio: files, resampling, capture, endpointing and playback."""
