"""Shared fixtures: a tokenizer trained once per session on a slice of the built-in corpus."""

import os
import sys
import tempfile

# The dev extra installs libtpu (for tests/test_aot.py); without this, every JAX process would probe for a
# TPU, print libtpu's warnings and hold /tmp/libtpu_lockfile. Compiling for TPU does not need the backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test run, shared by the xdist workers and every subprocess the
# tests start (they inherit the environment): the micro configs compile the same programs in many processes
# (~10% of the suite's time). Set before JAX is imported.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"llm_jax_tests_xla_cache_{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

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
