"""Evaluators (imported as visionstress.evaluators): per-task metrics over perturbed batches."""
