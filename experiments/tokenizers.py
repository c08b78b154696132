"""Claims (seed, "tokenization"): subword vocabularies shorten sequences several-fold over bytes or
characters, and at an equal compute budget that buys a better model; the same tokens hide the letters of a
word from the model.

    python experiments/tokenizers.py [--flops-steps 300] [--train-chars 5000000]

1. Compression: bytes per token on held-out prose (the docs) and code (stdlib sources) for the byte and
   character baselines and for SentencePiece BPE and unigram at 1k / 4k / 16k / 32k tokens, all trained on
   the same sample of the training documents; training time; encode and decode throughput (MB/s of UTF-8,
   batch encode of every held-out document, one process).
2. Equal-FLOP training: the small decoder of experiments/common.py trained with the byte tokenizer, BPE 1k and
   BPE 4k for the same training FLOPs (ModelConfig.flops_per_token: the head grows with the vocabulary, so
   the step counts differ); held-out bits per byte against FLOPs.
3. Letters inside tokens: the pieces of "strawberry" and friends.

Writes experiments/tokenizers.{md,json,png}. Measured 2026-12-02 on 2 CPU cores: ~9 minutes (tokenizers ~40 s,
the three training runs ~2 min each); tokenizers and finished runs are reused on a rerun.
"""

import argparse
import os
import time

import common
from llm_jax import tokenizer as tokenizer_lib
from llm_jax.data import sources

SIZES = (1024, 4096, 16384, 32768)  # --sizes; 4096 is needed (the FLOP budget and the pieces)
WORDS = ("strawberry", " strawberry", "Strawberry", "raspberry", "mississippi", "bookkeeper", "12345")
TRAINED = ("byte", "bpe-1024", "bpe-4096")  # the equal-FLOP runs


def _tokenizers(out_dir: str, train_docs: list[dict], train_chars: int, sizes) -> dict:
  """name -> (tokenizer directory, seconds to train), or (None, the error) where the corpus cannot give that
  vocabulary; trained once, reused when present."""
  specs = [("byte", "byte", 0), ("char-1024", "char", 1024)]
  specs += [(f"{kind}-{n}", kind, n) for kind in ("bpe", "unigram") for n in sizes]
  out = {}
  for name, kind, size in specs:
    directory = os.path.join(out_dir, f"_tokenizer_{name}")
    timing = directory + ".seconds"  # the training time, kept for reruns that reuse the tokenizer
    if not os.path.exists(timing):
      t0 = time.time()
      try:
        tokenizer_lib.train([d["text"] for d in train_docs], directory, vocab_size=max(size, 276),
                            model_type=kind, max_chars=train_chars)
      except ValueError as e:  # e.g. unigram: "Vocabulary size too high" for the sample
        out[name] = (None, str(e).rsplit("] ", 1)[-1])
        print(f"{name}: {out[name][1]}")
        continue
      with open(timing, "w", encoding="utf-8") as f:
        f.write(f"{time.time() - t0:.2f}")
    with open(timing, encoding="utf-8") as f:
      out[name] = (directory, float(f.read()))
    print(f"{name}: {out[name][1]:.1f}s")
  return out


def _throughput(tok, texts: list[str]) -> tuple[float, float]:
  """(encode MB/s, decode MB/s) over `texts`, batch encode."""
  mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
  t0 = time.perf_counter()
  ids = tok.encode_batch(texts)
  t1 = time.perf_counter()
  for row in ids:
    tok.decode(row)
  t2 = time.perf_counter()
  return mb / (t1 - t0), mb / (t2 - t1)


def _compression(tokenizers: dict, val_docs: list[dict]) -> dict:
  groups = {g: [d["text"] for d in val_docs if d["source"] == g] for g in ("docs", "code")}
  result = {}
  for name, (directory, seconds) in tokenizers.items():
    if directory is None:
      result[name] = {"error": seconds}
      continue
    tok = tokenizer_lib.load(directory)
    row = {"vocab_size": tok.vocab_size, "train_seconds": round(seconds, 1)}
    for group, texts in groups.items():
      n_bytes = sum(len(t.encode("utf-8")) for t in texts)
      row[f"bytes_per_token/{group}"] = n_bytes / sum(map(len, tok.encode_batch(texts)))
    row["encode_MBps"], row["decode_MBps"] = _throughput(tok, groups["docs"] + groups["code"])
    result[name] = row
  return result


def _mb(docs: list[dict], source: str) -> str:
  return f"{sum(len(d['text'].encode('utf-8')) for d in docs if d['source'] == source) / 1e6:.2f} MB"


def _pieces(directory: str) -> dict:
  tok = tokenizer_lib.load(directory)
  return {w: [tok.decode([i]) for i in tok.encode(w)] for w in WORDS}


def _equal_flops(args, tokenizers: dict) -> dict:
  """Trains the small decoder with each TRAINED tokenizer for the FLOPs bpe-4096 spends in args.flops_steps."""
  def config_for(name: str, steps: int):
    c = common.small_config(steps)
    c.tokenizer.model_type = name.split("-")[0]
    c.tokenizer.vocab_size = tokenizer_lib.load(tokenizers[name][0]).vocab_size
    c.train.eval_every = max(1, steps // 6)
    c.train.checkpoint_every = steps
    return c

  def flops_per_step(c) -> float:
    return common.config_lib.model_config(c).flops_per_token(c.data.seq_len) * c.data.seq_len * c.data.batch_size

  budget = args.flops_steps * flops_per_step(config_for("bpe-4096", args.flops_steps))
  runs = {}
  for name in TRAINED:
    steps = round(budget / flops_per_step(config_for(name, args.flops_steps)))
    config = config_for(name, steps)
    out = common.run(config, os.path.join(args.workdir, name), tokenizers[name][0])
    per_step = flops_per_step(config)
    evals = [r for r in out["records"] if "eval/bpb" in r]
    runs[name] = {"steps": steps, "flops_per_step": per_step, "seconds": round(out["seconds"], 1),
                  "params": common.config_lib.model_config(config).num_params(),
                  "curve": [[r["step"] * per_step, r["eval/bpb"]] for r in evals],
                  "final_bpb": evals[-1]["eval/bpb"]}
    print(name, runs[name]["steps"], "steps, eval/bpb", runs[name]["final_bpb"])
  return runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/tokenizers")
  parser.add_argument("--train-chars", type=int, default=5_000_000)
  parser.add_argument("--flops-steps", type=int, default=300, help="steps of the bpe-4096 run; sets the budget")
  parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="BPE / unigram vocabulary sizes")
  args = parser.parse_args()
  sizes = [int(n) for n in args.sizes.split(",")]
  os.makedirs(args.workdir, exist_ok=True)
  # A fifth of the documents held out for the compression table (the training runs keep their own 5% split).
  train_docs, val_docs = sources.split(sources.stdlib_documents(), 0.2)
  tokenizers = _tokenizers(args.workdir, train_docs, args.train_chars, sizes)
  compression = _compression(tokenizers, val_docs)
  pieces = {name: _pieces(tokenizers[name][0]) for name in dict.fromkeys(
      ("bpe-4096", "unigram-4096", f"bpe-{max(sizes)}", "byte"))}
  runs = _equal_flops(args, tokenizers)
  here = os.path.dirname(os.path.abspath(__file__))
  common.save_json(os.path.join(here, "tokenizers.json"), {"compression": compression, "pieces": pieces,
                                                            "equal_flops": runs, "args": vars(args)})
  rows = [[name, f"{r['vocab_size']:,}", f"{r['bytes_per_token/docs']:.2f}", f"{r['bytes_per_token/code']:.2f}",
           f"{r['train_seconds']:.1f}", f"{r['encode_MBps']:.1f}", f"{r['decode_MBps']:.1f}"] if "error" not in r
          else [name, "—", f"not trained: {r['error']}", "", "", "", ""] for name, r in compression.items()]
  trained_rows = [f"| {name} | {r['params']:,} | {r['steps']} | {r['steps'] * r['flops_per_step']:.3g} | "
                  f"{r['final_bpb']:.3f} | {r['seconds'] / 60:.1f} min |" for name, r in runs.items()]
  piece_rows = [f"| {name} | " + " | ".join("\u00b7".join(p).replace("|", "\\|").replace(" ", "\u2423")
                                            for p in by_word.values()) + " |" for name, by_word in pieces.items()]
  notes = [
      f"Tokenizers trained on the same {args.train_chars:,}-character sample of the training documents; "
      f"held out (a fifth of the corpus, by document hash): {_mb(val_docs, 'docs')} of prose in "
      f"{sum(d['source'] == 'docs' for d in val_docs)} documents and {_mb(val_docs, 'code')} of code in "
      f"{sum(d['source'] == 'code' for d in val_docs)}. Throughput: one process on a 2-core CPU, batch encode "
      "of all held-out documents, then decode of each.",
      "", "## Equal training FLOPs", "",
      "The small decoder of experiments/common.py (d_model 128, 4 layers, 16 x 128 tokens per step); each run "
      "gets the FLOPs bpe-4096 spends in --flops-steps steps.", "",
      "| tokenizer | params | steps | training FLOPs | held-out bits/byte | time |", "|---|---|---|---|---|---|",
      *trained_rows, "", "![bits per byte against FLOPs](tokenizers.png)", "",
      "## Letters inside tokens", "",
      "| tokenizer | " + " | ".join(f"`{w}`" for w in WORDS) + " |", "|---|" + "---|" * len(WORDS), *piece_rows,
      "", f"Command: `python experiments/tokenizers.py --flops-steps {args.flops_steps} "
      f"--train-chars {args.train_chars} --sizes {args.sizes}`."]
  common.write_table(os.path.join(here, "tokenizers.md"), "Tokenizers: compression, equal-FLOP training, letters",
                     ["tokenizer", "vocab", "bytes/token prose", "bytes/token code", "train s", "encode MB/s",
                      "decode MB/s"], rows, notes)
  plt = common.pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, r in runs.items():
    xs, ys = zip(*r["curve"][1:])  # step 0 is the untrained model
    ax.plot(xs, ys, "o-", label=name)
  ax.set(xscale="log", xlabel="training FLOPs", ylabel="held-out bits per byte")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(here, "tokenizers.png"), dpi=120)


if __name__ == "__main__":
  main()
