"""Claim (issue #15): the data-preparation stages run on an engine that scales past one machine at a cost we
can state: throughput of the local runner, the Ray Data runner, and (for the choice between them) the same
stages written for Apache Beam, on one corpus on this machine, each checked against the local output.

    python experiments/prepare_runners.py --source DIR [--beam-python /path/to/beam-venv/bin/python]

DIR: a directory of JSONL shards (e.g. /tmp/llm_jax_experiments/data_quality/dirty, which
experiments/data_quality.py writes). Beam cannot share this project's environment (it pins protobuf 6 and an
older pyarrow), so the Beam run happens in another interpreter that has `apache-beam numpy tqdm` installed
(`python -m venv V && V/bin/pip install apache-beam numpy tqdm`); it imports llm_jax's data modules from this
checkout (they need neither JAX nor ml_collections). Beam runs on its DirectRunner in multi-processing mode with
--workers processes: the runner Beam offers for one machine. Writes experiments/prepare_runners.{md,json}.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from llm_jax.data import dedup, prepare  # noqa: E402  (no JAX: importable in the Beam interpreter)


def _texts(out_dir: str) -> list[str]:
  names = sorted(n for n in os.listdir(out_dir) if n.startswith("shard-") and n.endswith(".jsonl"))
  return [json.loads(line)["text"] for n in names for line in open(os.path.join(out_dir, n), encoding="utf-8")]


def run_beam(source: str, out_dir: str, cfg: dict, workers: int) -> float:
  """The three stages as Beam pipelines (stage 2 needs all of stage 1: one pipeline per stage)."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  opts = lambda: PipelineOptions(direct_num_workers=workers, direct_running_mode="multi_processing")
  shutil.rmtree(out_dir, ignore_errors=True)
  os.makedirs(os.path.join(out_dir, ".work"))
  t0 = time.time()
  shards = prepare.plan(source, 4)
  with beam.Pipeline(options=opts()) as p:
    _ = (p | beam.Create(list(enumerate(shards))) | beam.Reshuffle()
         | beam.Map(lambda job: prepare.clean_shard(job[0], job[1], cfg, out_dir)))
  bands, rows, threshold = cfg["minhash_bands"], cfg["minhash_rows"], cfg["minhash_threshold"]
  edges_path = os.path.join(out_dir, ".work", "beam-edges")

  def exact_rows(n):
    m = prepare.load_meta(out_dir, n)
    return [(k.hex(), prepare.global_id(n, i)) for i, k in zip(m["i"].tolist(), m["key"].tolist())]

  with beam.Pipeline(options=opts()) as p:
    _ = (p | beam.Create(range(len(shards))) | beam.FlatMap(exact_rows) | beam.GroupByKey()
         | beam.FlatMap(lambda kv: [json.dumps([i, min(kv[1])]) for i in sorted(kv[1])[1:]])
         | beam.io.WriteToText(edges_path + "-exact"))
  removed = {}
  for name in os.listdir(os.path.join(out_dir, ".work")):
    if name.startswith("beam-edges-exact"):
      for line in open(os.path.join(out_dir, ".work", name), encoding="utf-8"):
        i, first = json.loads(line)
        removed[i] = ("exact_duplicate", first, 0)

  def band_rows(n):
    m = prepare.load_meta(out_dir, n)
    ids = [prepare.global_id(n, i) for i in m["i"].tolist()]
    out = []
    for band in range(bands):
      for pos, key in enumerate(dedup.band_keys(m["sig"], band, rows).tolist()):
        if ids[pos] not in removed:
          out.append(((band, key), (ids[pos], m["sig"][pos].tolist())))
    return out

  def bucket(kv):
    members = sorted(kv[1])
    if len(members) < 2:
      return []
    import numpy as np  # pylint: disable=import-outside-toplevel
    edges = dedup.bucket_edges([m[0] for m in members], np.array([m[1] for m in members], np.uint32), threshold)
    return [json.dumps(e) for e in edges]

  with beam.Pipeline(options=opts()) as p:
    _ = (p | beam.Create(range(len(shards))) | beam.FlatMap(band_rows) | beam.GroupByKey() | beam.FlatMap(bucket)
         | beam.io.WriteToText(edges_path + "-near"))
  edges = [tuple(json.loads(line)) for name in os.listdir(os.path.join(out_dir, ".work"))
           if name.startswith("beam-edges-near") for line in open(os.path.join(out_dir, ".work", name))]
  roots = dedup.components(edges)
  for doc_id, root in roots.items():
    if root != doc_id:
      removed[doc_id] = ("near_duplicate", root, 0)
  per_shard = [[] for _ in shards]
  for doc_id, (reason, kept, size) in removed.items():
    per_shard[doc_id >> 32].append([doc_id & 0xFFFFFFFF, reason, str(kept), size])
  with beam.Pipeline(options=opts()) as p:
    _ = (p | beam.Create(range(len(shards))) | beam.Map(lambda n: prepare.write_shard(n, out_dir, per_shard[n])))
  return time.time() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", required=True)
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/prepare_runners")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--beam-python", default="", help="an interpreter with apache-beam installed")
  parser.add_argument("--beam", action="store_true", help=argparse.SUPPRESS)  # internal: the Beam side
  args = parser.parse_args()
  if args.beam:
    cfg = json.load(open(os.path.join(args.workdir, "local", "stats.json"), encoding="utf-8"))["clean"]
    seconds = run_beam(args.source, os.path.join(args.workdir, "beam"), cfg, args.workers)
    print(json.dumps({"seconds": round(seconds, 2)}))
    return

  from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.data.source = args.source
  results = {}
  for runner in ("local", "ray"):
    out = os.path.join(args.workdir, runner)
    shutil.rmtree(out, ignore_errors=True)
    stats = prepare.run(config, out, runner=runner, workers=args.workers, progress=False)
    results[runner] = {"seconds": stats["seconds"], "mb": stats["input"]["bytes"] / 1e6,
                       "peak_rss_mb": stats["peak_rss_mb"]}
  local = _texts(os.path.join(args.workdir, "local"))
  results["ray"]["same_output"] = _texts(os.path.join(args.workdir, "ray")) == local
  if args.beam_python:
    cmd = [args.beam_python, os.path.abspath(__file__), "--beam", f"--source={args.source}",
           f"--workdir={args.workdir}", f"--workers={args.workers}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ROOT})
    results["beam"] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "mb": results["local"]["mb"],
                       "same_output": _texts(os.path.join(args.workdir, "beam")) == local}
  rows = [f"| {name} | {r['seconds']:.1f} | {r['mb'] / r['seconds']:.2f} | {r.get('same_output', '(reference)')} |"
          for name, r in results.items()]
  lines = ["# Data preparation runners on one machine", "",
           f"`python experiments/prepare_runners.py --source {args.source} --workers {args.workers}"
           + (" --beam-python ..." if args.beam_python else "") + f"`: {results['local']['mb']:.1f} MB of JSONL "
           f"shards, default config.clean, {args.workers} worker processes each, {os.cpu_count()} cores.", "",
           "| runner | seconds | MB/s | same documents as local |", "|---|---|---|---|", *rows, "",
           "Seconds include starting the engine (spawned worker processes; a local Ray instance; Beam's "
           "multi-processing DirectRunner) and all three stages.", ""]
  with open(os.path.join(HERE, "prepare_runners.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  with open(os.path.join(HERE, "prepare_runners.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
