"""Claim (seed: a small context window makes older tokens fade; models now reach far longer contexts): a model
trained at length L retrieves a planted fact within L but not beyond, and RoPE scaling plus a short continued
pretraining at 4L brings retrieval back at 2L and 4L.

    python experiments/long_context.py [--base_steps 2400] [--extend_steps 200]

1. Base: the small decoder of experiments/common.py (~1.9M parameters, RoPE theta 1e4) pretrained at L = 128
   on the built-in corpus mixed with needle documents, ~2/3 of the tokens (llm_jax/eval/needle.py: corpus text
   with a pass key line and, at the end, the question and the key), 40-120 tokens long, so every distance it
   learns to retrieve over is shorter than L.
2. Zero-shot: the same weights evaluated with each RoPE scaling at factor 4 (linear, NTK-aware, YaRN).
3. Continued pretraining (init_from the base, the recipe): rows of 4L = 512 tokens (4 rows per step: the base's
   tokens per step), the same mixture, so the needle documents stay shorter than L and only corpus pieces
   (up to ~1,200 tokens) fill the new positions: retrieval at long distances is never trained, only the
   positions are. Once with RoPE unchanged (the control: does length alone do it?), once with each scaling.
Evaluation: `needle.evaluate` on held-out corpus text, at L, 2L and 4L, 64 samples per length, the needle at
evenly spread depths. Writes experiments/long_context.{md,json,png}. CPU budget: ~25 minutes on 2 cores.
"""

import argparse
import dataclasses
import json
import os

import common

import llm_jax
from llm_jax import tokenizer as tokenizer_lib
from llm_jax.data import sources
from llm_jax.eval import needle

L = 128
FACTOR = 4
# Corpus pieces run to ~1,200 tokens and needle documents to ~0.6 L: by tokens this is ~2/3 needle documents.
MIXTURE = "docs:1,code:1,needle:48"
SCALINGS = {"none": {}, "linear": dict(rope_scaling="linear"), "ntk": dict(rope_scaling="ntk"),
            "yarn": dict(rope_scaling="yarn")}


def scaled(model_config, name: str):
  return model_config.replace(rope_scaling_factor=float(FACTOR), rope_original_max_len=L, **SCALINGS[name])


def write_needle_docs(path: str, tok, train_texts: list[str], n: int, seed: int):
  sample = "".join(train_texts[:50])[:200_000]
  chars_per_token = len(sample) / len(tok.encode(sample))
  docs = needle.documents(train_texts, n, min_chars=int(0.1 * L * chars_per_token),
                          max_chars=int(0.75 * L * chars_per_token), seed=seed, tokenizer=tok, max_tokens=L - 8)
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps({"text": d["text"], "source": "needle"}) + "\n")
  lengths = sorted(len(tok.encode(d["text"])) + 1 for d in docs[:500])
  return chars_per_token, lengths[len(lengths) // 2], lengths[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base_steps", type=int, default=2400)
  parser.add_argument("--extend_steps", type=int, default=200)
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/long_context")
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)

  base = common.small_config(args.base_steps, L)
  base.train.checkpoint_every = max(1, args.base_steps // 6)
  tokenizer_dir = common.shared_tokenizer(args.workdir, base)
  tok = tokenizer_lib.load(tokenizer_dir)
  train_docs, _ = sources.split(sources.load_documents("stdlib"), base.data.val_fraction)
  needle_path = os.path.join(args.workdir, "needle.jsonl")
  chars_per_token, median_tokens, max_tokens = write_needle_docs(
      needle_path, tok, [d["text"] for d in train_docs], 20000, base.seed)
  print(f"needle documents: {chars_per_token:.2f} chars/token, median {median_tokens} tokens, max {max_tokens}")
  haystack = needle.haystack_texts("stdlib", base.data.val_fraction)
  lengths = [L, 2 * L, 4 * L]

  def mixture(config):
    config.data.source = f"stdlib,{needle_path}"
    config.data.mixture = MIXTURE
    return config

  def evaluate(workdir, model_config):
    _, params, _ = llm_jax.load(workdir)
    return needle.evaluate(model_config, params, tok, haystack, lengths, samples_per_length=args.samples)

  results = {}
  base_dir = os.path.join(args.workdir, "base")
  out = common.run(mixture(base), base_dir, tokenizer_dir)
  base_model = common.config_lib.model_config(base)
  for name in SCALINGS:
    results[f"base, rope {name} (no training)"] = {"eval": evaluate(base_dir, scaled(base_model, name)),
                                                   "seconds": out["seconds"]}
  for name in SCALINGS:
    if name == "ntk":
      continue  # NTK-aware scaling is a theta change; YaRN and linear cover the recipe's two ends
    config = mixture(common.small_config(args.extend_steps, FACTOR * L))
    config.data.batch_size = base.data.batch_size // FACTOR
    config.train.lr, config.train.warmup_steps = 1e-3, 20
    config.init_from = base_dir
    for key, value in dataclasses.asdict(scaled(base_model, name)).items():
      if key.startswith("rope"):
        config.model[key] = value
    workdir = os.path.join(args.workdir, f"extend_{name}")
    run = common.run(config, workdir, tokenizer_dir)
    results[f"+{args.extend_steps} steps at {FACTOR * L}, rope {name}"] = {
        "eval": evaluate(workdir, common.config_lib.model_config(config)), "seconds": run["seconds"]}

  meta = {"base_steps": args.base_steps, "extend_steps": args.extend_steps, "samples": args.samples,
          "base_rows": base.data.batch_size, "median_tokens": median_tokens, "max_tokens": max_tokens}
  results = {k: {"eval": {str(n): v for n, v in r["eval"].items()}, "seconds": r["seconds"]}
             for k, r in results.items()}
  common.save_json(os.path.join(common.ROOT, "experiments", "long_context.json"), {"meta": meta, "results": results})
  report(results, meta)


def report(results: dict, meta: dict):
  """long_context.md and .png from the results as saved in long_context.json."""
  lengths = [str(L), str(2 * L), str(4 * L)]
  rows = []
  for name, r in results.items():
    acc = [r["eval"][n]["accuracy"] for n in lengths]
    depth = " / ".join(f"{x:.2f}" for x in r["eval"][lengths[-1]]["by_depth"])
    seconds = "0" if "no training" in name else f"{r['seconds']:.0f}"
    rows.append([name] + [f"{a:.2f}" for a in acc] + [f"{r['eval'][lengths[-1]]['answer_logprob']:.2f}", depth,
                                                       seconds])
  header = ["model"] + [f"acc @ {n}" for n in lengths] + [f"answer log-prob @ {lengths[-1]}",
                                                         f"acc @ {lengths[-1]} by depth (start .. end)", "train s"]
  base_s = next(r["seconds"] for name, r in results.items() if "no training" in name)
  notes = [f"Retrieval accuracy (exact pass key: 6 tokens, chance 1e-5) on {meta['samples']} held-out samples per "
           f"length; answer log-prob: the sum over the key's tokens, mean over samples (guessing 5 digits: -11.5). "
           f"Base: {meta['base_steps']} steps x {meta['base_rows']} x {L} tokens ({base_s:.0f} s); continued "
           f"pretraining from it: {meta['extend_steps']} steps x {meta['base_rows'] // FACTOR} x {FACTOR * L} tokens "
           f"(lr 1e-3), RoPE factor {FACTOR} over an original length of {L}. Needle documents: median "
           f"{meta['median_tokens']}, max {meta['max_tokens']} tokens (< {L}). Command: `python "
           f"experiments/long_context.py --base_steps {meta['base_steps']} --extend_steps {meta['extend_steps']}` "
           "(2-core CPU)."]
  common.write_table(os.path.join(common.ROOT, "experiments", "long_context.md"), "Context extension: needle retrieval",
                     header, rows, notes)
  plt = common.pyplot()
  if plt:
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, r in results.items():
      ax.plot([int(n) for n in lengths], [r["eval"][n]["accuracy"] for n in lengths], marker="o", label=name,
              linestyle="--" if "no training" in name else "-")
    ax.axvline(L, color="gray", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(n) for n in lengths], lengths)
    ax.set_xlabel(f"sample length (tokens); trained at {L}")
    ax.set_ylabel("pass key retrieval accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(os.path.join(common.ROOT, "experiments", "long_context.png"), dpi=120)


if __name__ == "__main__":
  main()
