"""Inference: sampling settings and the one generation loop (XLA-free, for SavedModel signatures too)."""
