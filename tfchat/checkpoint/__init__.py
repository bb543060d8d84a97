"""Checkpoints on disk: the model directory (atomic, versioned), Hugging Face GPT-2 import and its readers."""
