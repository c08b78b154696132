"""Shared fixtures: a tokenizer trained once per session on a slice of the built-in corpus."""

import os
import sys

# The dev extra installs libtpu (for tests/test_aot.py); without this, every JAX process would probe for a
# TPU, print libtpu's warnings and hold /tmp/libtpu_lockfile. Compiling for TPU does not need the backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm_jax import tokenizer as tokenizer_lib  # noqa: E402
from llm_jax.data import sources  # noqa: E402


@pytest.fixture(scope="session")
def corpus():
  return sources.stdlib_documents()


@pytest.fixture(scope="session")
def small_tokenizer(corpus, tmp_path_factory):
  texts = [d["text"] for d in corpus[:120]]
  return tokenizer_lib.train(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=512, max_chars=300_000)
