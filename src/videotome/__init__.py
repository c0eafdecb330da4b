"""videotome: token merging for video transformers."""
