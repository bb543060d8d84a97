"""Evaluation: the one log-prob primitive and every metric."""
