"""Benchmarks and checks that sit beside the trainer, not inside it."""
