"""Cleans and deduplicates a corpus into shards that training reads: `python -m llm_jax.data.prepare`.

    python -m llm_jax.data.prepare --config configs/tiny.py --out runs/data/stdlib [--workers 2]
        [--config.data.source=stdlib,synthetic] [--config.clean.min_words=20 ...]
    python -m llm_jax.train --config configs/tiny.py --config.data.source=runs/data/stdlib

Streams `config.data.source` (llm_jax/data/sources.py) through `config.clean`'s rules (llm_jax/data/clean.py),
exact deduplication and MinHash near-deduplication (llm_jax/data/dedup.py), and writes to --out:

- `shard-00000.jsonl`, ...: the surviving documents, `{"text", "source"}` per line, in input order, each shard
  at most --shard_mb; pointing data.source at the directory trains on them (labels kept for data.mixture);
- `stats.json`: documents and bytes in and out of every rule, per drop reason, per source, for unreadable
  records (reason and where), exact and near duplicates (clusters); time, MB/s and peak memory;
- `report.md`: the same as tables, with examples of removed documents for every reason.

Work is spread over --workers processes (default: all cores), which clean and sign documents in windows of
--window_mb of text, so memory stays bounded: the main process holds one window, a 16-byte exact-dedup key
and a 448-byte MinHash signature per surviving document (~0.5 GB per million documents), and writes
survivors to disk at once; the near-duplicate clustering then runs over the signatures and a second pass
over the written documents drops all but the first of each cluster.

Unreadable records (invalid UTF-8, malformed JSON lines, records without a string "text", documents over
clean.max_doc_bytes) are skipped and counted by reason, with their file and line in stats.json and the
report; a missing path or an unreadable parquet file stops the run with an error naming it.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import resource
import sys
import time
from typing import Iterator

import numpy as np
from tqdm import tqdm

from llm_jax.data import clean as clean_lib
from llm_jax.data import dedup, sources

EXAMPLES = 3  # removed documents shown per reason in report.md
SNIPPET = 300  # characters of each

_worker: dict = {}


def _init(cfg: dict):
  _worker["cfg"] = cfg
  _worker["hasher"] = dedup.MinHasher(cfg["minhash_bands"] * cfg["minhash_rows"], cfg["minhash_ngram"], cfg["seed"])


def _process(item: tuple[str, str]) -> tuple:
  """(text, kind) -> (cleaned text or None, rule trace, exact key, MinHash signature); runs in a worker."""
  text, kind = item
  cfg = _worker["cfg"]
  out, trace = clean_lib.clean(text, kind, cfg)
  if out is None:
    return None, trace, None, None
  sig = _worker["hasher"].signature(out) if cfg["near_dedup"] else None
  return out, trace, dedup.exact_key(out), sig


def _windows(docs: Iterator, window_bytes: int) -> Iterator[list]:
  window, size = [], 0
  for doc in docs:
    window.append(doc)
    size += len(doc["text"]) if isinstance(doc, dict) else 0
    if size >= window_bytes:
      yield window
      window, size = [], 0
  if window:
    yield window


class _Stats:
  """Counters for stats.json, and removed-document examples for the report."""

  def __init__(self):
    self.rules: dict[str, dict] = {}  # rule -> documents/bytes in/out, documents changed
    self.reasons: dict[str, dict] = {}  # drop reason -> documents, bytes, examples
    self.sources: dict[str, dict] = collections.defaultdict(lambda: dict.fromkeys(
        ("documents_in", "bytes_in", "documents_out", "bytes_out"), 0))

  def rule(self, name: str, bytes_in: int, bytes_out: int | None):
    r = self.rules.setdefault(name, dict.fromkeys(
        ("documents_in", "bytes_in", "documents_out", "bytes_out", "documents_changed"), 0))
    r["documents_in"] += 1
    r["bytes_in"] += bytes_in
    if bytes_out is not None:
      r["documents_out"] += 1
      r["bytes_out"] += bytes_out
      r["documents_changed"] += bytes_out != bytes_in

  def drop(self, reason: str, nbytes: int, where: str, text: str | None, note: str = ""):
    r = self.reasons.setdefault(reason, {"documents": 0, "bytes": 0, "examples": []})
    r["documents"] += 1
    r["bytes"] += nbytes
    if len(r["examples"]) < EXAMPLES:
      r["examples"].append({"where": where, "note": note, "text": (text or "")[:SNIPPET]})


def _nbytes(text: str) -> int:
  return len(text.encode("utf-8", "surrogatepass"))


def run(config, out_dir: str, *, workers: int | None = None, shard_mb: float = 64, window_mb: float = 32,
        progress: bool = True, log=print) -> dict:
  """Cleans and deduplicates config.data.source into out_dir (module docstring); returns the stats."""
  cfg = config.clean.to_dict()
  clean_lib.rule_names(cfg["text_rules"]), clean_lib.rule_names(cfg["code_rules"])  # fail before any work
  labels = lambda key: {s.strip() for s in cfg[key].split(",") if s.strip()}
  code_sources, trusted_sources = labels("code_sources"), labels("trusted_sources")
  workers = workers or os.cpu_count() or 1
  os.makedirs(out_dir, exist_ok=True)
  for name in os.listdir(out_dir):  # a previous run's output would mix with this one's
    if name.startswith(("shard-", ".pass1-")) and name.endswith(".jsonl"):
      os.remove(os.path.join(out_dir, name))
  t0, stats = time.time(), _Stats()
  skipped: dict[str, dict] = {}
  n_in = bytes_in = 0
  keys: dict[bytes, int] = {}  # exact key -> index of its first survivor
  signatures, wheres, sizes = [], [], []  # per survivor of cleaning and exact dedup
  pass1 = os.path.join(out_dir, ".pass1-00000.jsonl")
  ctx = multiprocessing.get_context("spawn")  # the caller may have started JAX's threads: no fork
  bar = tqdm(desc="cleaning", unit="B", unit_scale=True, disable=not progress, file=sys.stderr)
  with ctx.Pool(workers, initializer=_init, initargs=(cfg,)) as pool, open(pass1, "w", encoding="utf-8") as f:
    for window in _windows(sources.stream(config.data.source), int(window_mb * 2**20)):
      todo = []
      for doc in window:
        if isinstance(doc, sources.Skipped):
          s = skipped.setdefault(doc.reason, {"records": 0, "examples": []})
          s["records"] += 1
          if len(s["examples"]) < 20:
            s["examples"].append(str(doc))
          continue
        size = _nbytes(doc["text"])
        n_in, bytes_in = n_in + 1, bytes_in + size
        src = stats.sources[doc["source"]]
        src["documents_in"] += 1
        src["bytes_in"] += size
        if cfg["max_doc_bytes"] and size > cfg["max_doc_bytes"]:
          stats.drop("too_large", size, doc["where"], doc["text"], f"{size:,} bytes > clean.max_doc_bytes")
          continue
        todo.append(doc)
      items = [(d["text"], "code" if d["source"] in code_sources else
                "trusted" if d["source"] in trusted_sources else "text") for d in todo]
      for doc, (text, trace, key, sig) in zip(todo, pool.imap(_process, items, chunksize=8)):
        for rule, b_in, b_out, reason in trace:
          stats.rule(rule, b_in, b_out)
          if b_out is None:
            stats.drop(reason, b_in, doc["where"], doc["text"])
        bar.update(len(doc["text"]))
        if text is None:
          continue
        size = _nbytes(text)
        if cfg["exact_dedup"]:
          stats.rule("exact_dedup", size, None if key in keys else size)
          if key in keys:
            stats.drop("exact_duplicate", size, doc["where"], text, f"same as {wheres[keys[key]]}")
            continue
          keys[key] = len(wheres)
        wheres.append(doc["where"])
        sizes.append(size)
        if sig is not None:
          signatures.append(sig)
        f.write(json.dumps({"text": text, "source": doc["source"]}, ensure_ascii=False) + "\n")
  bar.close()
  del keys
  clean_seconds = time.time() - t0

  roots = np.arange(len(wheres))
  if cfg["near_dedup"] and signatures:
    log(f"near-duplicates: clustering {len(signatures):,} signatures ({cfg['minhash_bands']} bands x "
        f"{cfg['minhash_rows']} rows)")
    roots = dedup.clusters(np.stack(signatures), cfg["minhash_bands"], cfg["minhash_rows"], cfg["minhash_threshold"])
  del signatures
  cluster_sizes = collections.Counter(roots.tolist())
  clusters = {r: n for r, n in cluster_sizes.items() if n > 1}

  shards, out_docs, out_bytes = [], 0, 0
  shard_bytes, current = int(shard_mb * 2**20), None
  with open(pass1, encoding="utf-8") as f:
    for i, line in enumerate(f):
      record = json.loads(line)
      if cfg["near_dedup"]:
        stats.rule("near_dedup", sizes[i], None if roots[i] != i else sizes[i])
        if roots[i] != i:
          stats.drop("near_duplicate", sizes[i], wheres[i], record["text"],
                     f"cluster of {cluster_sizes[roots[i]]}, kept {wheres[roots[i]]}")
          continue
      if current is None or current.tell() >= shard_bytes:
        if current:
          current.close()
        shards.append(os.path.join(out_dir, f"shard-{len(shards):05d}.jsonl"))
        current = open(shards[-1], "w", encoding="utf-8")  # pylint: disable=consider-using-with
      current.write(line)
      out_docs, out_bytes = out_docs + 1, out_bytes + sizes[i]
      src = stats.sources[record["source"]]
      src["documents_out"] += 1
      src["bytes_out"] += sizes[i]
  if current:
    current.close()
  os.remove(pass1)

  seconds = time.time() - t0
  result = {
      "source": config.data.source, "out": out_dir, "workers": workers,
      "input": {"documents": n_in, "bytes": bytes_in},
      "output": {"documents": out_docs, "bytes": out_bytes, "shards": [os.path.basename(s) for s in shards]},
      "skipped": skipped, "rules": _in_order(stats.rules, cfg),
      "reasons": {k: {"documents": v["documents"], "bytes": v["bytes"]} for k, v in stats.reasons.items()},
      "sources": dict(stats.sources),
      "near_dedup": {"clusters": len(clusters), "largest_cluster": max(clusters.values(), default=1)},
      "seconds": round(seconds, 2), "clean_seconds": round(clean_seconds, 2),
      "mb_per_s": round(bytes_in / 1e6 / max(seconds, 1e-9), 3),
      "peak_rss_mb": {"main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)},
      "clean": cfg,
  }
  if not out_docs:
    log(f"warning: no document of {config.data.source!r} survived cleaning (see {out_dir}/report.md)")
  with open(os.path.join(out_dir, "stats.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, ensure_ascii=False)
  with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
    f.write(report(result, stats.reasons))
  log(f"{n_in:,} documents ({bytes_in / 1e6:.1f} MB) -> {out_docs:,} ({out_bytes / 1e6:.1f} MB) in {len(shards)} "
      f"shards, {seconds:.1f} s ({result['mb_per_s']} MB/s, {workers} workers); "
      f"{sum(s['records'] for s in skipped.values())} unreadable records skipped; {out_dir}/report.md")
  return result


def _in_order(rules: dict, cfg: dict) -> dict:
  order = ["normalize", *clean_lib.rule_names(cfg["text_rules"]), *clean_lib.rule_names(cfg["code_rules"]),
           "exact_dedup", "near_dedup"]
  return {k: rules[k] for k in sorted(rules, key=order.index)}


def _pct(a: int, b: int) -> str:
  return f"{100 * a / b:.1f}%" if b else "-"


def report(result: dict, reasons: dict) -> str:
  """report.md: rules, reasons and sources as tables, examples of removed documents."""
  inp, out = result["input"], result["output"]
  lines = [f"# Data preparation: {result['source']}", "",
           f"{inp['documents']:,} documents, {inp['bytes'] / 1e6:.2f} MB in; {out['documents']:,} documents, "
           f"{out['bytes'] / 1e6:.2f} MB out ({_pct(out['bytes'], inp['bytes'])} of bytes kept) in "
           f"{len(out['shards'])} shards. {result['seconds']} s, {result['mb_per_s']} MB/s with {result['workers']} "
           f"workers; peak memory {result['peak_rss_mb']['main']} MB (main), "
           f"{result['peak_rss_mb']['largest_worker']} MB (largest worker).", "",
           "## Rules, in order", "",
           "| rule | documents in | documents out | changed | bytes in | bytes out |", "|---|---|---|---|---|---|"]
  for name, r in result["rules"].items():
    lines.append(f"| {name} | {r['documents_in']:,} | {r['documents_out']:,} | {r['documents_changed']:,} | "
                 f"{r['bytes_in']:,} | {r['bytes_out']:,} |")
  lines += ["", "## Why documents were removed", "", "| reason | documents | bytes |", "|---|---|---|"]
  for name, r in sorted(result["reasons"].items(), key=lambda kv: -kv[1]["documents"]):
    lines.append(f"| {name} | {r['documents']:,} | {r['bytes']:,} |")
  nd = result["near_dedup"]
  lines += ["", f"Near-duplicate clusters: {nd['clusters']:,} (largest: {nd['largest_cluster']} documents).", "",
            "## Sources", "", "| source | documents in | documents out | bytes in | bytes out |",
            "|---|---|---|---|---|"]
  for name, s in result["sources"].items():
    lines.append(f"| {name} | {s['documents_in']:,} | {s['documents_out']:,} | {s['bytes_in']:,} | "
                 f"{s['bytes_out']:,} |")
  if result["skipped"]:
    lines += ["", "## Unreadable records (skipped)", ""]
    for reason, s in result["skipped"].items():
      lines.append(f"- {reason}: {s['records']:,}, e.g. " + "; ".join(s["examples"][:EXAMPLES]))
  lines += ["", "## Examples of removed documents", ""]
  for name, r in reasons.items():
    lines.append(f"### {name}")
    for ex in r["examples"]:
      lines += ["", f"`{ex['where']}`" + (f" ({ex['note']})" if ex["note"] else ""), "", "```",
                ex["text"].replace("```", "` ` `") + ("..." if len(ex["text"]) >= SNIPPET else ""), "```"]
    lines.append("")
  return "\n".join(lines) + "\n"


def main(argv):
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  del argv
  f = flags.FLAGS
  if f.config is None:
    raise app.UsageError("--config is required, e.g. --config configs/tiny.py (its data.source and clean sections)")
  config = f.config
  try:
    config_lib.validate(config)
    run(config, f.out, workers=f.workers or None, shard_mb=f.shard_mb, window_mb=f.window_mb)
  except (config_lib.ConfigError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags

  from llm_jax import config as _config_lib
  config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/NAME.py): its data.source and "
                                  "clean sections are used.", lock_config=True)
  absl_flags.DEFINE_string("out", "runs/data/prepared", "Output directory for shards, stats.json and report.md.")
  absl_flags.DEFINE_integer("workers", 0, "Worker processes (0: all cores).")
  absl_flags.DEFINE_float("shard_mb", 64.0, "Largest output shard, in MB.")
  absl_flags.DEFINE_float("window_mb", 32.0, "Text read ahead and cleaned at once, in MB (bounds memory).")
  app.run(main, flags_parser=_config_lib.parse_flags)
