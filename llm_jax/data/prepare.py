"""Cleans and deduplicates a corpus into shards that training reads: `python -m llm_jax.data.prepare`.

    python -m llm_jax.data.prepare --config configs/tiny.py --out runs/data/stdlib [--workers 2]
        [--config.data.source=stdlib,synthetic] [--config.clean.min_words=20 ...]
    python -m llm_jax.train --config configs/tiny.py --config.data.source=runs/data/stdlib

Streams `config.data.source` (llm_jax/data/sources.py) through `config.clean`'s rules (llm_jax/data/clean.py),
exact deduplication and MinHash near-deduplication (llm_jax/data/dedup.py), and writes to --out:

- `shard-00000.jsonl`, ...: the surviving documents, `{"text", "source"}` per line, in input order, one
  shard per input shard; pointing data.source at the directory trains on them (labels kept for data.mixture);
- `stats.json`: documents and bytes in and out of every rule, per drop reason, per source, for unreadable
  records (reason and where), exact and near duplicates (clusters); time, MB/s and peak memory;
- `report.md`: the same as tables, with examples of removed documents for every reason.

Stages, each resumable at shard granularity (work files in --out/.work; a rerun with the same source and
clean config skips what is done; another config starts over):
1. clean: every input shard (a file of the source, or a slice of about --shard_mb of a built-in source) is
   read, normalized, filtered and MinHash-signed on its own -> `.work/clean-N.jsonl` (survivors),
   `meta-N.npz` (exact-dedup key, signature, size per survivor), `clean-N.json` (counters; written last, it
   marks the shard done).
2. dedup, across shards: exact duplicates (the first in input order survives), then LSH over the survivors'
   signatures: per band, documents are grouped by the band's hash (a shuffle by band key), each bucket gives
   edges (`dedup.bucket_edges`), union-find over all edges gives clusters, the first document of each
   survives -> `.work/dedup.json`.
3. write: every shard's survivors minus the removed -> `shard-N.jsonl` (written under a temporary name and
   renamed, so a shard is in the output whole or not at all).

Runners (`--runner`):
- `local` (default, nothing extra to install): stages 1 and 3 over --workers processes (default: all cores),
  stage 2 in this process (numpy; ~0.5 KB per surviving document in memory).
- `ray`: the same functions on Ray Data (`pip install 'ray[data]'`), stage 2's grouping by key as Ray Data
  shuffles, so neither the signatures nor the documents need one machine; `--ray_address` names a running
  cluster (`auto` inside one), otherwise a local Ray instance starts. --out must be a path every node sees.
  Ray rather than Apache Beam: Ray Data runs the same Python functions on a laptop (a local instance) and on a
  cluster (`ray up`, KubeRay, Anyscale, Vertex AI) with one API, which is how ML teams already run batch
  inference and data jobs; Beam's portable runners need a Flink/Spark/Dataflow deployment, and its direct
  runner is a test harness. Install weight: `ray[data]` adds ray (79 MB wheel) and pandas to this project's
  dependencies with no version changes; apache-beam (20 MB wheel) would downgrade protobuf (7 -> 6) and
  pyarrow and add 14 packages. Measured on this 2-core machine (experiments/prepare_runners.md, 23.1 MB in 8 shards,
  2 workers each, engine start included): local 2.8 s, Ray 24.3 s, Beam's multi-processing DirectRunner 11.9 s,
  all three with the same surviving documents. Beam's direct runner was faster than Ray here (on a corpus this
  small, Ray's start-up, hash shuffles and task scheduling dominate), but it is not what Beam runs in production
  and it cannot share this project's environment unchanged; on one machine the local runner is the one to use,
  and either engine only pays off past one machine's cores, memory and disk.

Unreadable records (invalid UTF-8, malformed JSON lines, records without a string "text", documents over
clean.max_doc_bytes) are skipped and counted by reason, with their file and line in stats.json and the
report; a missing path or an unreadable parquet file stops the run with an error naming it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import resource
import shutil
import sys
import time
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from llm_jax.data import clean as clean_lib
from llm_jax.data import dedup, sources

EXAMPLES = 3  # removed documents shown per reason in report.md
SNIPPET = 300  # characters of each
RUNNERS = ("local", "ray")
_DELAY_ENV = "LLM_JAX_PREPARE_SHARD_DELAY"  # tests: seconds of sleep per shard, to kill a run half-way


def _nbytes(text: str) -> int:
  return len(text.encode("utf-8", "surrogatepass"))


def _peak_rss_mb() -> float:
  """This process's peak resident memory. Linux's VmHWM belongs to the process image, so a worker started by
  fork + exec does not inherit its parent's size (getrusage's ru_maxrss does)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return round(int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) / 1024, 1)
  except (OSError, StopIteration, ValueError):
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux, bytes on macOS


# ----------------------------------------------------------------------------------------------- the plan


def plan(source: str, shard_mb: float) -> list[dict]:
  """The input shards of a data.source: one per file; built-in sources cut into slices of ~shard_mb."""
  shards = []
  for entry in [e.strip() for e in source.split(",") if e.strip()]:
    if entry in sources.BUILTIN:
      start, size, i = 0, 0, 0
      for i, doc in enumerate(sources.stream(entry)):
        size += len(doc["text"])
        if size >= shard_mb * 2**20:
          shards.append({"entry": entry, "start": start, "stop": i + 1})
          start, size = i + 1, 0
      if size:
        shards.append({"entry": entry, "start": start, "stop": i + 1})
    else:
      label = sources.entry_label(entry)
      shards += [{"path": path, "label": label} for path in sources.entry_files(entry)]
  return shards


def _shard_documents(shard: dict) -> Iterator:
  if "entry" in shard:
    return itertools.islice(sources.stream(shard["entry"]), shard["start"], shard["stop"])
  return sources.file_stream(shard["path"], shard["label"])


def _work(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, ".work", name)


def _write_atomic(path: str, write: Callable):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    write(f)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- stage 1: clean


def _new_stats() -> dict:
  return {"documents": 0, "bytes": 0, "rules": {}, "reasons": {}, "skipped": {}, "sources": {}}


def _count_rule(stats: dict, rule: str, bytes_in: int, bytes_out: int | None):
  r = stats["rules"].setdefault(rule, dict.fromkeys(
      ("documents_in", "bytes_in", "documents_out", "bytes_out", "documents_changed"), 0))
  r["documents_in"] += 1
  r["bytes_in"] += bytes_in
  if bytes_out is not None:
    r["documents_out"] += 1
    r["bytes_out"] += bytes_out
    r["documents_changed"] += bytes_out != bytes_in


def _count_drop(stats: dict, reason: str, nbytes: int, where: str, text: str | None, note: str = ""):
  r = stats["reasons"].setdefault(reason, {"documents": 0, "bytes": 0, "examples": []})
  r["documents"] += 1
  r["bytes"] += nbytes
  if len(r["examples"]) < EXAMPLES:
    r["examples"].append({"where": where, "note": note, "text": (text or "")[:SNIPPET]})


def _source(stats: dict, label: str) -> dict:
  return stats["sources"].setdefault(label, dict.fromkeys(("documents_in", "bytes_in", "documents_out",
                                                            "bytes_out"), 0))


def clean_shard(index: int, shard: dict, cfg: dict, out_dir: str) -> dict:
  """Stage 1 for one input shard; returns its counters (read back from disk when the shard is done)."""
  done = _work(out_dir, f"clean-{index:05d}.json")
  if os.path.exists(done):
    with open(done, encoding="utf-8") as f:
      return json.load(f)
  if os.environ.get(_DELAY_ENV):
    time.sleep(float(os.environ[_DELAY_ENV]))
  labels = lambda key: {s.strip() for s in cfg[key].split(",") if s.strip()}
  code, trusted = labels("code_sources"), labels("trusted_sources")
  hasher = dedup.MinHasher(cfg["minhash_bands"] * cfg["minhash_rows"], cfg["minhash_ngram"], cfg["seed"])
  stats, meta = _new_stats(), {"i": [], "key": [], "sig": [], "size": []}
  stats["wheres"] = []  # of the survivors, for the report's notes
  with open(_work(out_dir, f"clean-{index:05d}.jsonl"), "w", encoding="utf-8") as f:
    for i, doc in enumerate(_shard_documents(shard)):
      if isinstance(doc, sources.Skipped):
        s = stats["skipped"].setdefault(doc.reason, {"records": 0, "examples": []})
        s["records"] += 1
        if len(s["examples"]) < 20:
          s["examples"].append(str(doc))
        continue
      size = _nbytes(doc["text"])
      stats["documents"] += 1
      stats["bytes"] += size
      src = _source(stats, doc["source"])
      src["documents_in"] += 1
      src["bytes_in"] += size
      if cfg["max_doc_bytes"] and size > cfg["max_doc_bytes"]:
        _count_drop(stats, "too_large", size, doc["where"], doc["text"], f"{size:,} bytes > clean.max_doc_bytes")
        continue
      kind = "code" if doc["source"] in code else "trusted" if doc["source"] in trusted else "text"
      text, trace = clean_lib.clean(doc["text"], kind, cfg)
      for rule, b_in, b_out, reason in trace:
        _count_rule(stats, rule, b_in, b_out)
        if b_out is None:
          _count_drop(stats, reason, b_in, doc["where"], doc["text"])
      if text is None:
        continue
      meta["i"].append(i)
      meta["key"].append(dedup.exact_key(text))
      meta["sig"].append(hasher.signature(text) if cfg["near_dedup"] else np.zeros(0, np.uint32))
      meta["size"].append(_nbytes(text))
      stats["wheres"].append(doc["where"])
      f.write(json.dumps({"i": i, "text": text, "source": doc["source"]}, ensure_ascii=False) + "\n")
  stats["peak_rss_mb"] = _peak_rss_mb()
  np.savez(_work(out_dir, f"meta-{index:05d}.npz"), i=np.asarray(meta["i"], np.int64),
           key=np.asarray(meta["key"], "S16").reshape(-1), size=np.asarray(meta["size"], np.int64),
           sig=np.stack(meta["sig"]) if meta["sig"] else np.zeros((0, 0), np.uint32))
  _write_atomic(done, lambda f: json.dump(stats, f, ensure_ascii=False))
  return stats


def global_id(shard: int, i: int) -> int:
  """A document's global id: ordered like the input (shard, then position in the shard)."""
  return (shard << 32) | i


def load_meta(out_dir: str, index: int) -> dict:
  with np.load(_work(out_dir, f"meta-{index:05d}.npz")) as z:
    return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------- stage 2: dedup


def _exact_removed(ids: np.ndarray, keys: np.ndarray) -> dict[int, int]:
  """{removed id: id of the first document with its key}, for ids in input order."""
  first, removed = {}, {}
  for doc_id, key in zip(ids.tolist(), keys.tolist()):
    if key in first:
      removed[doc_id] = first[key]
    else:
      first[key] = doc_id
  return removed


def dedup_local(out_dir: str, n_shards: int, cfg: dict) -> dict:
  """Stage 2 in this process: {removed id: (reason, id of the document kept, cluster size)}."""
  metas = [load_meta(out_dir, n) for n in range(n_shards)]
  ids = np.concatenate([global_id(n, 0) + m["i"] for n, m in enumerate(metas)]) if metas else np.zeros(0, np.int64)
  keys = np.concatenate([m["key"] for m in metas]) if metas else np.zeros(0, "S16")
  removed = {}
  if cfg["exact_dedup"]:
    removed = {d: ("exact_duplicate", k, 0) for d, k in _exact_removed(ids, keys).items()}
  if cfg["near_dedup"] and len(ids):
    sigs = np.concatenate([m["sig"] for m in metas if len(m["sig"])])
    keep = np.array([d not in removed for d in ids.tolist()])
    kept_ids = ids[keep]
    roots = dedup.clusters(sigs[keep], cfg["minhash_bands"], cfg["minhash_rows"], cfg["minhash_threshold"])
    sizes = collections.Counter(roots.tolist())
    for pos, root in enumerate(roots.tolist()):
      if root != pos:
        removed[int(kept_ids[pos])] = ("near_duplicate", int(kept_ids[root]), sizes[root])
  return removed


def _dedup_counters(out_dir: str, partials: list[dict], cfg: dict, removed: dict) -> dict:
  """exact_dedup / near_dedup rule counters, cluster statistics, and where each survivor that a removed
  document duplicates came from (for the report), in one pass over the shards' sizes."""
  stats = _new_stats()
  cluster_sizes, kept, wheres = {}, {v[1] for v in removed.values()}, {}
  for n, part in enumerate(partials):
    m = load_meta(out_dir, n)
    for i, size, where in zip(m["i"].tolist(), m["size"].tolist(), part["wheres"]):
      if global_id(n, i) in kept:
        wheres[global_id(n, i)] = where
      why = removed.get(global_id(n, i))
      if cfg["exact_dedup"]:
        _count_rule(stats, "exact_dedup", size, None if why and why[0] == "exact_duplicate" else size)
      if cfg["near_dedup"] and not (why and why[0] == "exact_duplicate"):
        _count_rule(stats, "near_dedup", size, None if why else size)
      if why and why[0] == "near_duplicate":
        cluster_sizes[why[1]] = why[2]
  return {"rules": stats["rules"], "clusters": len(cluster_sizes),
          "largest_cluster": max(cluster_sizes.values(), default=1), "wheres": wheres}


def dedup_ray(out_dir: str, n_shards: int, cfg: dict) -> dict:
  """Stage 2 on Ray Data: exact keys grouped by a shuffle, then LSH buckets grouped by (band, band hash) in a
  shuffle, bucket_edges per bucket; the edges (about one per duplicate) meet in union-find here."""
  import ray  # pylint: disable=import-outside-toplevel
  bands, rows, threshold = cfg["minhash_bands"], cfg["minhash_rows"], cfg["minhash_threshold"]
  shards = ray.data.from_items([{"shard": n} for n in range(n_shards)])
  partitions = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))  # Ray's default, 200, suits big clusters

  def exact_rows(row):
    m = load_meta(out_dir, row["shard"])
    return [{"id": global_id(row["shard"], i), "key": k.hex()} for i, k in zip(m["i"].tolist(), m["key"].tolist())]

  def exact_group(batch):
    order = np.argsort(batch["id"])
    ids = batch["id"][order]
    return {"id": ids[1:], "first": np.full(len(ids) - 1, ids[0])}

  removed = {}
  if cfg["exact_dedup"]:
    out = (shards.flat_map(exact_rows).groupby("key", num_partitions=partitions)
           .map_groups(exact_group, batch_format="numpy").take_all())
    removed = {int(r["id"]): ("exact_duplicate", int(r["first"]), 0) for r in out}
  if cfg["near_dedup"]:
    exact = set(removed)

    def band_rows(row):
      m = load_meta(out_dir, row["shard"])
      ids = np.array([global_id(row["shard"], i) for i in m["i"].tolist()], np.int64)
      keep = np.array([d not in exact for d in ids.tolist()], bool)
      ids, sigs = ids[keep], m["sig"][keep] if len(m["sig"]) else m["sig"]
      out = []
      for band in range(bands):
        keys = dedup.band_keys(sigs, band, rows).view(np.int64)  # Arrow has no uint64 group keys here
        for doc_id, key, sig in zip(ids.tolist(), keys.tolist(), sigs):
          out.append({"band": band, "bucket": key, "id": doc_id, "sig": sig})
      return out

    def bucket_group(batch):
      order = np.argsort(batch["id"])
      ids, sigs = batch["id"][order].tolist(), np.stack(batch["sig"])[order]
      edges = dedup.bucket_edges(ids, sigs, threshold) if len(ids) > 1 else []
      return {"a": np.array([a for a, _ in edges], np.int64), "b": np.array([b for _, b in edges], np.int64)}

    out = (shards.flat_map(band_rows).groupby(["band", "bucket"], num_partitions=partitions)
           .map_groups(bucket_group, batch_format="numpy").take_all())
    roots = dedup.components((int(r["a"]), int(r["b"])) for r in out)
    sizes = collections.Counter(roots.values())
    for doc_id, root in roots.items():
      if root != doc_id:
        removed[doc_id] = ("near_duplicate", root, sizes[root])
  return removed


# ---------------------------------------------------------------------------------------- stage 3: write


def write_shard(index: int, out_dir: str, removed: list) -> dict:
  """Stage 3 for one shard: its survivors to shard-N.jsonl; returns per-source counts and removed examples.
  `removed`: [position in the shard, reason, where of the document kept, cluster size] of its removed ones."""
  path = os.path.join(out_dir, f"shard-{index:05d}.jsonl")
  stats = _new_stats()
  removed = {r[0]: r[1:] for r in removed}
  with open(_work(out_dir, f"clean-{index:05d}.json"), encoding="utf-8") as f:
    wheres = json.load(f)["wheres"]
  lines = []
  with open(_work(out_dir, f"clean-{index:05d}.jsonl"), encoding="utf-8") as f:
    for pos, line in enumerate(f):
      record = json.loads(line)
      why = removed.get(record["i"])
      if why:
        reason, kept, size = why
        note = f"same as {kept}" if reason == "exact_duplicate" else f"cluster of {size}, kept {kept}"
        _count_drop(stats, reason, _nbytes(record["text"]), wheres[pos], record["text"], note)
        continue
      src = _source(stats, record["source"])
      src["documents_out"] += 1
      src["bytes_out"] += _nbytes(record["text"])
      lines.append(json.dumps({"text": record["text"], "source": record["source"]}, ensure_ascii=False) + "\n")
  if not os.path.exists(path):
    _write_atomic(path, lambda f: f.writelines(lines))
  stats["peak_rss_mb"] = _peak_rss_mb()
  return stats


# ------------------------------------------------------------------------------------------------ runners


def _pool_map(pool, fn, items: list, desc: str, progress: bool) -> list:
  """fn(*item) for each item, on the pool's processes (in this one without a pool), in order."""
  jobs = pool.imap(_star, [(fn, item) for item in items]) if pool else (fn(*item) for item in items)
  return list(tqdm(jobs, total=len(items), desc=desc, disable=not progress, file=sys.stderr))


def _star(job):
  fn, args = job
  return fn(*args)


def _ray_map(fn, items: list, desc: str) -> list:
  import ray  # pylint: disable=import-outside-toplevel
  del desc
  ds = ray.data.from_items([{"job": json.dumps(item)} for item in items])
  out = ds.map(lambda row: {"out": json.dumps(fn(*json.loads(row["job"])), ensure_ascii=False)}).take_all()
  return [json.loads(r["out"]) for r in out]


def run(config, out_dir: str, *, runner: str = "local", workers: int | None = None, shard_mb: float = 4,
        ray_address: str | None = None, progress: bool = True, log=print) -> dict:
  """Cleans and deduplicates config.data.source into out_dir (module docstring); returns the stats."""
  if runner not in RUNNERS:
    raise ValueError(f"runner={runner!r}: runners are {RUNNERS}")
  cfg = config.clean.to_dict()
  clean_lib.rule_names(cfg["text_rules"]), clean_lib.rule_names(cfg["code_rules"])  # fail before any work
  t0 = time.time()
  shards = plan(config.data.source, shard_mb)
  files = [(s["path"], os.stat(s["path"]).st_size, os.stat(s["path"]).st_mtime_ns) for s in shards if "path" in s]
  fingerprint = hashlib.sha256(json.dumps({"source": config.data.source, "clean": cfg, "shards": shards,
                                           "files": files}, sort_keys=True).encode()).hexdigest()
  fp_path = _work(out_dir, "plan.sha256")
  if os.path.exists(fp_path) and open(fp_path, encoding="utf-8").read() == fingerprint:
    log(f"resuming in {out_dir}: work files of the same source and clean config found")
  else:  # another config's work and output must not mix with this one's
    shutil.rmtree(os.path.join(out_dir, ".work"), ignore_errors=True)
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
      if name.startswith("shard-") and name.endswith(".jsonl"):
        os.remove(os.path.join(out_dir, name))
    os.makedirs(os.path.join(out_dir, ".work"))
    _write_atomic(fp_path, lambda f: f.write(fingerprint))
  workers = workers or os.cpu_count() or 1
  with contextlib.ExitStack() as stack:
    return _run(config, out_dir, shards, cfg, runner, workers, ray_address, progress, log, t0, stack)


def _run(config, out_dir, shards, cfg, runner, workers, ray_address, progress, log, t0, stack) -> dict:
  if runner == "ray":
    import ray  # pylint: disable=import-outside-toplevel
    if not ray.is_initialized():
      ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
               **({} if ray_address else {"num_cpus": workers}))
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    mapper = lambda fn, items, desc: _ray_map(fn, items, desc)
  else:
    pool = None
    if workers > 1 and len(shards) > 1:  # one pool for both stages: a spawned process takes ~1 s to start
      ctx = multiprocessing.get_context("spawn")  # the caller may have started JAX's threads: no fork
      pool = stack.enter_context(ctx.Pool(min(workers, len(shards))))
    mapper = lambda fn, items, desc: _pool_map(pool, fn, items, desc, progress)

  partials = mapper(clean_shard, [(n, s, cfg, out_dir) for n, s in enumerate(shards)], "clean")
  t_clean = time.time()
  dedup_path = _work(out_dir, "dedup.json")
  if os.path.exists(dedup_path):
    with open(dedup_path, encoding="utf-8") as f:
      removed = {int(k): tuple(v) for k, v in json.load(f).items()}
  else:
    removed = dedup_ray(out_dir, len(shards), cfg) if runner == "ray" else dedup_local(out_dir, len(shards), cfg)
    _write_atomic(dedup_path, lambda f: json.dump({str(k): v for k, v in removed.items()}, f))
  counters = _dedup_counters(out_dir, partials, cfg, removed)
  per_shard = [[] for _ in shards]
  for doc_id, (reason, kept, size) in removed.items():  # the report names where each survivor came from
    per_shard[doc_id >> 32].append([doc_id & 0xFFFFFFFF, reason, counters["wheres"].get(kept, str(kept)), size])
  outputs = mapper(write_shard, [(n, out_dir, per_shard[n]) for n in range(len(shards))], "write")
  result = _merge(config, out_dir, shards, partials, outputs, counters, runner, workers, t0, t_clean, cfg)
  log(f"{result['input']['documents']:,} documents ({result['input']['bytes'] / 1e6:.1f} MB) -> "
      f"{result['output']['documents']:,} ({result['output']['bytes'] / 1e6:.1f} MB) in "
      f"{len(result['output']['shards'])} shards, {result['seconds']:.1f} s ({result['mb_per_s']} MB/s, {runner} "
      f"runner, {workers} workers); {sum(s['records'] for s in result['skipped'].values())} unreadable records "
      f"skipped; {out_dir}/report.md")
  if not result["output"]["documents"]:
    log(f"warning: no document of {config.data.source!r} survived cleaning (see {out_dir}/report.md)")
  return result


def _merge(config, out_dir, shards, partials, outputs, dd, runner, workers, t0, t_clean, cfg) -> dict:
  total = _new_stats()
  for part in list(partials) + list(outputs):
    total["documents"] += part["documents"]
    total["bytes"] += part["bytes"]
    for rule, r in part["rules"].items():
      t = total["rules"].setdefault(rule, dict.fromkeys(r, 0))
      for k, v in r.items():
        t[k] += v
    for reason, r in part["reasons"].items():
      t = total["reasons"].setdefault(reason, {"documents": 0, "bytes": 0, "examples": []})
      t["documents"] += r["documents"]
      t["bytes"] += r["bytes"]
      t["examples"] = (t["examples"] + r["examples"])[:EXAMPLES]
    for reason, s in part["skipped"].items():
      t = total["skipped"].setdefault(reason, {"records": 0, "examples": []})
      t["records"] += s["records"]
      t["examples"] = (t["examples"] + s["examples"])[:20]
    for label, s in part["sources"].items():
      t = _source(total, label)
      for k, v in s.items():
        t[k] += v
  total["rules"].update(dd["rules"])
  order = ["normalize", *clean_lib.rule_names(cfg["text_rules"]), *clean_lib.rule_names(cfg["code_rules"]),
           "exact_dedup", "near_dedup"]
  out_docs = sum(s["documents_out"] for s in total["sources"].values())
  out_bytes = sum(s["bytes_out"] for s in total["sources"].values())
  seconds = time.time() - t0
  result = {
      "source": config.data.source, "out": out_dir, "runner": runner, "workers": workers,
      "input": {"documents": total["documents"], "bytes": total["bytes"], "shards": len(shards)},
      "output": {"documents": out_docs, "bytes": out_bytes,
                 "shards": [f"shard-{n:05d}.jsonl" for n in range(len(shards))]},
      "skipped": total["skipped"], "rules": {k: total["rules"][k] for k in sorted(total["rules"], key=order.index)},
      "reasons": {k: {"documents": v["documents"], "bytes": v["bytes"]} for k, v in total["reasons"].items()},
      "sources": total["sources"],
      "near_dedup": {"clusters": dd["clusters"], "largest_cluster": dd["largest_cluster"]},
      "seconds": round(seconds, 2), "clean_seconds": round(t_clean - t0, 2),
      "mb_per_s": round(total["bytes"] / 1e6 / max(seconds, 1e-9), 3),
      "peak_rss_mb": {"main": _peak_rss_mb(),
                      "largest_worker": max((p.get("peak_rss_mb", 0) for p in list(partials) + list(outputs)),
                                            default=0)},
      "clean": cfg,
  }
  _write_atomic(os.path.join(out_dir, "stats.json"), lambda f: json.dump(result, f, indent=1, ensure_ascii=False))
  _write_atomic(os.path.join(out_dir, "report.md"), lambda f: f.write(report(result, total["reasons"])))
  return result


def _pct(a: int, b: int) -> str:
  return f"{100 * a / b:.1f}%" if b else "-"


def report(result: dict, reasons: dict) -> str:
  """report.md: rules, reasons and sources as tables, examples of removed documents."""
  inp, out = result["input"], result["output"]
  lines = [f"# Data preparation: {result['source']}", "",
           f"{inp['documents']:,} documents, {inp['bytes'] / 1e6:.2f} MB in ({inp['shards']} input shards); "
           f"{out['documents']:,} documents, {out['bytes'] / 1e6:.2f} MB out ({_pct(out['bytes'], inp['bytes'])} of "
           f"bytes kept). {result['seconds']} s, {result['mb_per_s']} MB/s, {result['runner']} runner with "
           f"{result['workers']} workers; peak memory {result['peak_rss_mb']['main']} MB (main), "
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
    run(config, f.out, runner=f.runner, workers=f.workers or None, shard_mb=f.shard_mb,
        ray_address=f.ray_address or None)
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
  absl_flags.DEFINE_enum("runner", "local", list(RUNNERS), "local: worker processes on this machine; ray: Ray Data.")
  absl_flags.DEFINE_integer("workers", 0, "Worker processes of the local runner / CPUs of a local Ray (0: all cores).")
  absl_flags.DEFINE_float("shard_mb", 4.0, "Input shard size for the built-in sources, in MB (files are shards).")
  absl_flags.DEFINE_string("ray_address", "", "A running Ray cluster ('auto' on one of its nodes); empty: start "
                           "a local Ray instance.")
  app.run(main, flags_parser=_config_lib.parse_flags)
