"""Evaluation: bits per byte, task accuracy, reports.
Standard benchmarks (GSM8K, ARC, HellaSwag) on JSONL files you supply: llm_jax/eval/benchmarks.py."""
