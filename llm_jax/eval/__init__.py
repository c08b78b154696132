"""Evaluation: bits per byte, task accuracy, reports."""
