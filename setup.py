"""llm_jax: the whole life of a ChatGPT-like model in one small JAX/Flax codebase."""

from setuptools import find_packages, setup

setup(
    name="llm_jax",
    version="0.1.0",
    description="Data cleaning, tokenizer, pretraining, inference, SFT and RL for LLMs in JAX/Flax, "
                "from a CPU to a TPU pod.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["llm_jax", "llm_jax.*"]),
    package_data={"llm_jax": ["serve_page.html"]},  # the web chat page llm_jax.serve serves at /
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "sentencepiece>=0.2",
        "chex>=0.1.89",
        "ml_collections>=1.0",
        "absl-py",
        "numpy",
        "tqdm",
        "tensorboardX",
    ],
    extras_require={
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
        # Hugging Face interop: safetensors for weights; tiktoken / tokenizers for Llama-3 and tokenizer.json files;
        # transformers + torch only to check parity against the reference implementations.
        # Reading .parquet corpora (e.g. FineWeb shards) as data.source; data preparation on Ray Data.
        "parquet": ["pyarrow"],
        "ray": ["ray[data]>=2.40"],
        "hf": ["safetensors>=0.4", "tiktoken", "tokenizers", "transformers>=5,<6", "torch"],
        # The tests include HF logit parity; torch is pinned to the CPU build these machines carry. jax[tpu]
        # brings libtpu (the TPU compiler, ~700 MB) for the ahead-of-time compilation tests (llm_jax/aot.py); its
        # bound matches install_requires, and jax's tpu extra pins libtpu to the jax release that is installed.
        # The serving tests drive the API with the openai client and the web page with selenium (through
        # Debian's chromium and chromium-driver, which .ci/run installs). The notebooks run in an ipykernel of the
        # test's interpreter through nbclient (tests/test_notebooks.py).
        "dev": ["pytest>=8", "pytest-xdist", "matplotlib", "safetensors>=0.4", "tiktoken", "tokenizers",
                "transformers>=5,<6", "torch==2.13.0", "jax[tpu]>=0.7", "hypothesis", "pyarrow", "ray[data]>=2.40",
                "openai>=1.40", "selenium>=4.20", "nbclient", "nbformat", "ipykernel"],
    },
)
