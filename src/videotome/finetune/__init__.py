"""``videotome finetune``: fine-tune a video classifier on any dataset ``videotome eval`` reads, on Hugging Face
``Trainer``."""
