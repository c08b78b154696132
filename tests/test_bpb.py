"""Bits per byte on hand-computed examples."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.eval import bpb


def test_bits_per_byte_hand_computed():
  # Uniform logits over 4 tokens: every token costs ln 4 nats = 2 bits.
  logits = jnp.zeros((1, 3, 4))
  targets = jnp.array([[0, 1, 2]])
  weights = jnp.array([[1.0, 1.0, 1.0]])
  token_bytes = jnp.array([3, 1, 0, 5])  # token 2 is a special token: 0 bytes, left out
  nats, num_bytes, tokens = bpb.token_nats_and_bytes(logits, targets, weights, token_bytes)
  assert float(nats) == pytest.approx(2 * math.log(4))
  assert float(num_bytes) == 4.0 and float(tokens) == 2.0
  assert bpb.bits_per_byte(nats, num_bytes) == pytest.approx(2 * 2 / 4)  # 4 bits over 4 bytes = 1.0


def test_bits_per_byte_respects_weights_and_confidence():
  logits = jnp.array([[[10.0, 0.0], [0.0, 0.0]]])  # position 0 nearly certain of token 0
  targets = jnp.array([[0, 1]])
  token_bytes = jnp.array([2, 2])
  nats, num_bytes, _ = bpb.token_nats_and_bytes(logits, targets, jnp.array([[1.0, 0.0]]), token_bytes)
  assert float(num_bytes) == 2.0
  assert float(nats) == pytest.approx(math.log1p(math.exp(-10.0)), abs=1e-6)  # float32 log-softmax


def test_order0_entropy():
  assert bpb.order0_byte_entropy(["aaaa"]) == 0.0
  assert bpb.order0_byte_entropy(["ab", "ab"]) == pytest.approx(1.0)
  assert bpb.order0_byte_entropy(["abcd"]) == pytest.approx(2.0)
  text = "é"  # two UTF-8 bytes, each once
  assert bpb.order0_byte_entropy([text]) == pytest.approx(1.0)
  rng = np.random.default_rng(0)
  uniform = bytes(rng.integers(0, 128, 100_000, dtype=np.uint8)).decode("ascii")
  assert bpb.order0_byte_entropy([uniform]) == pytest.approx(7.0, abs=0.01)
