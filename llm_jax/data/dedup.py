"""Exact and near-duplicate detection: a hash of normalized text, and MinHash + LSH over word n-gram shingles.

Exact: `exact_key` hashes the text lower-cased with whitespace runs collapsed (BLAKE2b, 16 bytes); the first
document with a key survives.

Near: a document's shingles are its word n-grams (default 5; words are runs of letters/digits, lower-cased,
accents kept). `signature` is the MinHash of the shingle set under `bands * rows` hash functions
(default 14 x 8 = 112): the probability that two signatures agree at a position is the Jaccard similarity J
of the shingle sets. LSH banding cuts the signature into `bands` bands of `rows` values; two documents are
candidates when some band is identical, with probability 1 - (1 - J^rows)^bands: for 14 x 8, 0.92 at J = 0.8,
0.99 at J = 0.85, 0.26 at J = 0.6 and 0.05 at J = 0.5 (the curve's midpoint is ~0.72). Within a bucket each
document is joined to the first earlier document whose signature agrees at >= `threshold` of positions
(estimated J, default 0.7), which removes the LSH false positives below the threshold; union-find over those
edges gives the clusters, and the first document of each cluster (in input order) survives.

Implementation: vectorised numpy. Words are hashed with CRC-32 (deterministic across processes and machines,
unlike Python's `hash`; each distinct word once per document), shingle hashes are polynomial combinations of
word hashes in uint64, and the hash functions are multiply-shift hashes (a * x + b) >> 32 with random odd
64-bit a, computed for blocks of shingles at once. `python -m llm_jax.bench dedup` times it against
datasketch's MinHash.update_batch (SHA-1 per shingle, then the same vectorised permutations) on the same
shingles: on 4 MB of stdlib code on this repository's 2-core CPU, 9.0 MB/s against 5.1 MB/s (1.8x), with the same
Jaccard error (0.033 vs 0.036 mean absolute, 112 hashes). So numpy it is: faster, no extra dependency, and the LSH
banding, verification and clustering are ours either way.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # combines word hashes into shingle hashes
_BLOCK = 4096  # shingles hashed at once (bounds memory at 8 * BLOCK * num_perm bytes)


def exact_key(text: str) -> bytes:
  return hashlib.blake2b(_SPACE.sub(" ", text.strip().lower()).encode("utf-8", "replace"), digest_size=16).digest()


def _params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
  b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
  return a, b


class MinHasher:
  """signature(text) -> uint32[num_perm]; the same seed gives the same signatures in every process."""

  def __init__(self, num_perm: int = 112, ngram: int = 5, seed: int = 0):
    if num_perm < 1 or ngram < 1:
      raise ValueError(f"num_perm={num_perm} and ngram={ngram} must be positive")
    self.num_perm, self.ngram = num_perm, ngram
    self.a, self.b = _params(num_perm, seed)

  def shingles(self, text: str) -> np.ndarray:
    """uint64 hashes of the word n-grams, repeats included (a text of fewer than n words is one shingle)."""
    words = _WORD.findall(text.lower())
    if not words:
      return np.zeros(1, np.uint64)
    table = {w: zlib.crc32(w.encode("utf-8", "replace")) for w in set(words)}  # words repeat: hash each once
    h = np.fromiter(map(table.__getitem__, words), np.uint64, len(words))
    n = min(self.ngram, len(h))
    out = h[:len(h) - n + 1].copy()
    for i in range(1, n):  # uint64 arrays wrap around silently
      out = out * _MULT + h[i:len(h) - n + 1 + i]
    return out

  def signature(self, text: str) -> np.ndarray:
    x = self.shingles(text)
    sig = np.full(self.num_perm, np.iinfo(np.uint64).max, np.uint64)
    for start in range(0, len(x), _BLOCK):
      block = x[start:start + _BLOCK]
      sig = np.minimum(sig, ((self.a[:, None] * block[None, :] + self.b[:, None]) >> np.uint64(32)).min(axis=1))
    return sig.astype(np.uint32)


def jaccard(a: str, b: str, ngram: int = 5) -> float:
  """The exact Jaccard similarity of two texts' shingle sets (what the signatures estimate)."""
  h = MinHasher(1, ngram)
  sa, sb = set(h.shingles(a).tolist()), set(h.shingles(b).tolist())
  return len(sa & sb) / max(len(sa | sb), 1)


def band_keys(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
  """A 64-bit hash of each signature's `band`-th band of `rows` values (collisions are verified away)."""
  keys = np.zeros(len(signatures), np.uint64)
  for r in range(band * rows, (band + 1) * rows):  # uint64 arrays wrap around silently
    keys = keys * _MULT + signatures[:, r].astype(np.uint64)
  return keys


def bucket_edges(ids: Sequence[int], signatures: np.ndarray, threshold: float) -> list[tuple[int, int]]:
  """The edges one LSH bucket contributes: its members (ids in document order, their signatures) each joined
  to the first earlier member whose signature agrees on >= threshold of the positions. A function of the
  bucket alone, so a local run and a distributed one (buckets grouped by a shuffle) find the same edges."""
  edges = []
  for k in range(1, len(ids)):
    agree = (signatures[:k] == signatures[k]).mean(axis=1) >= threshold
    if agree.any():
      edges.append((ids[int(np.argmax(agree))], ids[k]))
  return edges


def components(edges: Iterable[tuple[int, int]]) -> dict[int, int]:
  """Union-find over edges: {id: smallest id of its connected component} for every id on an edge (ids
  not on an edge are their own component). The smallest id, the earliest document, is the survivor."""
  parent: dict[int, int] = {}

  def find(i: int) -> int:
    parent.setdefault(i, i)
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for i, j in edges:
    ri, rj = find(i), find(j)
    if ri != rj:
      parent[max(ri, rj)] = min(ri, rj)
  return {i: find(i) for i in list(parent)}


def clusters(signatures: np.ndarray, bands: int = 14, rows: int = 8, threshold: float = 0.7) -> np.ndarray:
  """Cluster roots for [n, bands * rows] signatures in document order: root[i] == i for a survivor, else the
  index of the first document of i's cluster (LSH buckets per band -> bucket_edges -> components)."""
  n, num_perm = signatures.shape
  if num_perm != bands * rows:
    raise ValueError(f"signatures have {num_perm} values, bands * rows = {bands} * {rows} = {bands * rows}")
  edges = []
  for band in range(bands):
    keys = band_keys(signatures, band, rows)
    order = np.argsort(keys, kind="stable")  # stable: each bucket's members stay in document order
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], n]):
      if e - s > 1:
        members = order[s:e]
        edges += bucket_edges(members.tolist(), signatures[members], threshold)
  roots = np.arange(n)
  for i, root in components(edges).items():
    roots[i] = root
  return roots
