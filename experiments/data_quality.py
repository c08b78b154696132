"""Claim (seed, "pretraining data"): at an equal number of training tokens, a model trained on cleaned and
deduplicated data predicts clean held-out text better than one trained on the same data with the dirt left in.

    python experiments/data_quality.py [--steps 400]

1. The built-in corpus is split by document hash (5% held out: the *clean validation split*, never edited).
2. A dirty corpus is made from the training split plus seeded dirt: near-duplicates of 20% of the documents
   (two copies each, 0.5-2% of words replaced, inserted or deleted), web boilerplate lines (cookie banners,
   share buttons, "enable JavaScript") inside 30% of the prose documents, boilerplate-only pages, keyword
   spam, gibberish, and documents that repeat one line.
3. `python -m llm_jax.data.prepare` (default config.clean, local runner) cleans it.
4. The small decoder of experiments/common.py trains for --steps steps of 16 x 128 tokens on the dirty and
   on the cleaned corpus (same tokenizer, trained on the clean training split; same seed, same token count);
   every checkpoint is evaluated on the clean validation split.

Writes experiments/data_quality.{md,json,png} and leaves the prepared corpus's report.md in --workdir.
"""

import argparse
import json
import os
import random
import shutil
import string
import subprocess
import sys

import common  # puts the repository on sys.path
from llm_jax.data import sources
from llm_jax.data.tasks import spelling

HERE = os.path.dirname(os.path.abspath(__file__))
BOILERPLATE = ("This website uses cookies to improve your experience. Accept all cookies",
               "Share this page on Facebook, Twitter and LinkedIn", "Please enable JavaScript to view this page.",
               "Read our privacy policy and terms of use", "Home | About | Contact | Login", "Subscribe",
               "Copyright 2024 All rights reserved", "Skip to main content")
SPAM = ("buy cheap watches online best price", "free shipping discount code click here now",
        "casino bonus win big today no deposit", "lose weight fast miracle pill doctors hate it")


def _edit(rng: random.Random, text: str, share: float) -> str:
  words = text.split(" ")
  for _ in range(max(1, int(len(words) * share))):
    i, op = rng.randrange(len(words)), rng.random()
    if op < 0.4:
      words[i] = rng.choice(spelling.words())
    elif op < 0.7:
      words.insert(i, rng.choice(spelling.words()))
    elif len(words) > 1:
      del words[i]
  return " ".join(words)


def dirty_corpus(train_docs: list[dict], seed: int = 0) -> tuple[list[dict], dict]:
  """The training documents plus seeded dirt; returns (documents, bytes of each kind of dirt)."""
  rng = random.Random(seed)
  docs, added = [], dict.fromkeys(("near_duplicates", "boilerplate_lines", "boilerplate_pages", "spam",
                                   "gibberish", "repeated_lines"), 0)

  def add(kind: str, text: str, source: str = "web"):
    docs.append({"text": text, "source": source})
    added[kind] += len(text.encode("utf-8"))

  for doc in train_docs:
    text = doc["text"]
    if doc["source"] == "docs" and rng.random() < 0.3:
      lines = text.split("\n")
      for _ in range(rng.randint(2, 5)):
        line = rng.choice(BOILERPLATE)
        lines.insert(rng.randrange(len(lines) + 1), line)
        added["boilerplate_lines"] += len(line) + 1
      text = "\n".join(lines)
    docs.append({"text": text, "source": doc["source"]})
    if rng.random() < 0.2:
      for _ in range(2):
        add("near_duplicates", _edit(rng, doc["text"], rng.uniform(0.005, 0.02)), doc["source"])
  n = len(train_docs) // 2
  for _ in range(n):
    add("boilerplate_pages", "\n".join(rng.choice(BOILERPLATE) for _ in range(rng.randint(20, 60))) + "\n")
    add("spam", "\n".join(f"{rng.choice(SPAM)} {rng.choice(SPAM)}!!!" for _ in range(rng.randint(30, 80))) + "\n")
    add("gibberish", " ".join("".join(rng.choice(string.ascii_letters + string.digits + "#@$%")
                                      for _ in range(rng.randint(1, 16))) for _ in range(rng.randint(300, 800))))
    line = rng.choice([l for l in rng.choice(train_docs)["text"].split("\n") if l.strip()] or ["pass"])
    add("repeated_lines", "\n".join([line] * rng.randint(30, 120)) + "\n")
  rng.shuffle(docs)
  return docs, added


def _write_jsonl(path: str, docs: list[dict]):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps({"text": d["text"], "source": d["source"]}, ensure_ascii=False) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/data_quality")
  args = parser.parse_args()

  base = common.small_config(args.steps)
  base.data.val_fraction = 0.05  # the clean validation split; each run also holds out 5% of its own corpus
  base.train.checkpoint_every = max(1, args.steps // 8)
  base.train.keep_checkpoints = 9
  train_docs, val_docs = sources.split(sources.stdlib_documents(), base.data.val_fraction)
  tokenizer_dir = common.shared_tokenizer(args.workdir, base)  # the stdlib training split (data.source=stdlib)

  dirty_dir, clean_dir = os.path.join(args.workdir, "dirty"), os.path.join(args.workdir, "clean")
  dirty, added = dirty_corpus(train_docs)
  shutil.rmtree(dirty_dir, ignore_errors=True)
  for n in range(8):  # 8 input shards, so that both runners have parallel work
    _write_jsonl(os.path.join(dirty_dir, f"dirty-{n}.jsonl"), dirty[n::8])
  shutil.rmtree(clean_dir, ignore_errors=True)
  # The CLI, as a user runs it (its spawned workers import the data modules only, not this script's JAX).
  subprocess.run([sys.executable, "-m", "llm_jax.data.prepare", f"--config={common.ROOT}/configs/tiny.py",
                  f"--config.data.source={dirty_dir}", f"--out={clean_dir}"], cwd=common.ROOT, check=True)
  with open(os.path.join(clean_dir, "stats.json"), encoding="utf-8") as f:
    stats = json.load(f)

  results = {}
  for name, source in (("dirty", dirty_dir), ("cleaned", clean_dir)):
    config = common.small_config(args.steps)
    config.data.val_fraction, config.data.source = base.data.val_fraction, source
    config.train.checkpoint_every, config.train.keep_checkpoints = base.train.checkpoint_every, 9
    workdir = os.path.join(args.workdir, name)
    out = common.run(config, workdir + "_run", tokenizer_dir)
    every = config.train.checkpoint_every
    steps = sorted(set(range(every, args.steps + 1, every)) | {args.steps})
    curve = {step: common.eval_bpb_at_length(config, workdir + "_run", config.data.seq_len, val_docs=val_docs,
                                             step=step) for step in steps}
    docs = sources.load_documents(source)
    results[name] = {"documents": len(docs), "mb": sum(len(d["text"].encode()) for d in docs) / 1e6,
                     "tokens": args.steps * config.data.batch_size * config.data.seq_len,
                     "val_bpb": curve[args.steps], "curve": curve, "seconds": round(out["seconds"], 1)}

  dirt_mb = sum(added.values()) / 1e6
  rows = [[name, f"{r['documents']:,}", f"{r['mb']:.1f}", f"{r['tokens']:,}", f"{r['val_bpb']:.3f}",
           f"{r['seconds'] / 60:.1f} min"] for name, r in results.items()]
  kinds = ", ".join(f"{k.replace('_', ' ')} {v / 1e6:.2f} MB" for k, v in added.items())
  removed = ", ".join(f"{k} {v['documents']:,}"
                      for k, v in sorted(stats["reasons"].items(), key=lambda kv: -kv[1]["documents"]))
  train_mb = sum(len(d["text"].encode()) for d in train_docs) / 1e6
  notes = [f"Dirt added to the {len(train_docs)} training documents ({train_mb:.1f} MB): {dirt_mb:.1f} MB ({kinds}).",
           f"Cleaning (default config.clean): {stats['input']['documents']:,} -> {stats['output']['documents']:,} "
           f"documents; removed: {removed}. {stats['input']['bytes'] / 1e6:.1f} MB in {stats['seconds']} s "
           f"({stats['mb_per_s']} MB/s, {stats['workers']} worker processes, {stats['input']['shards']} shards; peak "
           f"memory {stats['peak_rss_mb']['main']} MB main, {stats['peak_rss_mb']['largest_worker']} MB per worker). "
           "Other runners: experiments/prepare_runners.md.",
           f"Validation: the {len(val_docs)} held-out documents of the built-in corpus, untouched; both models use "
           f"the same tokenizer (trained on the clean training split) and see the same number of tokens.",
           f"`python experiments/data_quality.py --steps {args.steps}`; the model of experiments/common.py "
           "small_config."]
  common.write_table(os.path.join(HERE, "data_quality.md"), "Data quality: dirty vs cleaned pretraining data",
                     ["corpus", "documents", "MB", "tokens trained", "clean val bpb", "train time"], rows, notes)
  common.save_json(os.path.join(HERE, "data_quality.json"),
                   {"results": results, "dirt_bytes": added, "prepare": {k: stats[k] for k in (
                       "input", "output", "reasons", "rules", "seconds", "mb_per_s", "workers", "peak_rss_mb")}})
  plt = common.pyplot()
  if plt:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
      steps = sorted(r["curve"])
      ax.plot([s * 16 * base.data.seq_len for s in steps], [r["curve"][s] for s in steps], marker="o", label=name)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("bits per byte on the clean validation split")
    ax.set_title("Dirty vs cleaned pretraining data")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "data_quality.png"), dpi=120)


if __name__ == "__main__":
  main()
