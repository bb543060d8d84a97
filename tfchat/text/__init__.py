"""Text: the tokenizer, the special-token registry and the chat template."""
