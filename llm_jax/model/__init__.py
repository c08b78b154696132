"""Model: `Transformer` (Llama-style decoder) and its `ModelConfig`."""
from llm_jax.model.layers import ModelConfig
from llm_jax.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
