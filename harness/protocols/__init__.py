"""Evaluation protocols. Each module exposes `evaluate(model, tokenizer, cfg) -> dict`."""
