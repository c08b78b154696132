"""Model: `Transformer` (the decoder), its `ModelConfig`, and named presets."""
from llm_jax.model.config import ModelConfig
from llm_jax.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
