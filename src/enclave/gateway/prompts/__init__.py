"""Prompt building per use case and model family."""
