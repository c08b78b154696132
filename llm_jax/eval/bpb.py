"""Bits per byte: the tokenizer-independent measure of a language model's loss.

bpb = (sum over target tokens of -ln p(token)) / ln 2 / (UTF-8 bytes those tokens decode to).
Tokens that stand for no text (special tokens, byte count 0) are left out of both sums, so a model is
not rewarded for predicting its own control tokens. The order-0 byte entropy of the same text (a model
that knows only byte frequencies) is the first baseline a trained model has to beat.
"""

from __future__ import annotations

import math
from typing import Iterable

import jax.numpy as jnp
import numpy as np
import optax


def token_nats_and_bytes(logits_BTV, targets_BT, weights_BT, token_bytes_V):
  """(sum of nats, sum of bytes, number of tokens) over weighted target tokens that stand for text."""
  nats_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), targets_BT)
  bytes_BT = jnp.take(token_bytes_V, targets_BT) * weights_BT
  counted_BT = (bytes_BT > 0).astype(jnp.float32)
  return jnp.sum(nats_BT * counted_BT), jnp.sum(bytes_BT).astype(jnp.float32), jnp.sum(counted_BT)


def bits_per_byte(nats: float, num_bytes: float) -> float:
  return float(nats) / math.log(2) / float(num_bytes)


def order0_byte_entropy(texts: Iterable[str]) -> float:
  """Entropy in bits of the byte distribution of `texts` (the bpb of the best byte-unigram model)."""
  counts = np.zeros(256, np.int64)
  for text in texts:
    counts += np.bincount(np.frombuffer(text.encode("utf-8"), np.uint8), minlength=256)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())
