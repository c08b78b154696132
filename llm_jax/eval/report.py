"""Report card of a run (workdir/report.md with plots) and one table across the stages of a pipeline.

    python -m llm_jax.eval.report runs/tiny runs/sft_tiny runs/grpo_tiny [--card runs/card.md]

    report.write("runs/tiny")                               # -> runs/tiny/report.md (+ runs/tiny/report/*.png)
    report.card(["runs/tiny", "runs/sft_tiny"], "card.md")  # -> the markdown table, also written to card.md

`write(workdir)` reads only config.json and metrics.jsonl (llm_jax/training/metrics.py), so it renders any
workdir, finished or not, and llm_jax.train calls it at the end of every run (process 0). It knows no stage's
keys: every numeric key of metrics.jsonl becomes a row with its first and last value, `eval/...` keys in
their own table. Speed is not learning: THROUGHPUT keys get a median in the header instead of a row. Plots:
the training loss with the learning rate on a twin axis (report/loss.png), and one panel per eval/ family
(report/eval.png), where a family is one key or the pass@k keys of one task together; a series with fewer than
2 points or a single value throughout is in the table only. The markdown is a function of those two files
and the optional summary of the run (its wall time, which the files do not hold); the PNGs are not byte-stable.

Plots are drawn with matplotlib's object API (a Figure, no pyplot), so a report written inside a training
process or a notebook switches no backend. matplotlib is a dev extra: without it report.md says so in one
line and has no plots.

`card(workdirs)` is one table in pipeline order (config.STAGES): for each stage the HEADLINES metrics, first
and last value (SFT's tool tasks: tools off and tools on), and whether they moved the better way; a metric a
workdir never logged reads "n/a".
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import statistics
import sys
from typing import Sequence

from llm_jax import config as config_lib
from llm_jax.training import metrics as metrics_lib

# What says whether a stage worked, and which way is better; "*" stands for a task name (one row per task).
# A third element (old, new, needed) compares the key's last value with that of the key with old replaced by
# new instead of with its own first value, for keys whose sibling with old replaced by needed was logged: SFT's
# tool tasks are measured once, at the end, with tools on and off, and only tasks solved with a tool call
# (eval/<task>/exact_call) can gain from tools (sft_compare's task has none).
HEADLINES = {
    "pretrain": (("eval/bpb", "lower"), ("eval/loss", "lower")),
    "distill": (("eval/bpb", "lower"), ("eval/loss", "lower")),
    "sft": (("eval/loss", "lower"), ("eval/*/tools_on", "higher", ("/tools_on", "/tools_off", "/exact_call"))),
    "reward": (("eval/accuracy", "higher"), ("eval/margin", "higher")),
    "dpo": (("eval/gold", "higher"), ("eval/accuracy", "higher")),
    "ppo": (("eval/gold", "higher"), ("eval/proxy", "higher")),
    "grpo": (("eval/*/pass@1", "higher"), ("eval/*/greedy", "higher")),
}
THROUGHPUT = {"tokens_per_sec": "tokens/s", "mfu": "MFU", "step_s": "s/step", "rollout_s": "rollout s/step"}
PLOTS = ("loss.png", "eval.png")  # under workdir/report/


def check_workdir(workdir: str):
  """Raises ValueError naming `workdir` unless it holds config.json and metrics.jsonl."""
  missing = [name for name in ("config.json", "metrics.jsonl") if not os.path.isfile(os.path.join(workdir, name))]
  if missing:
    raise ValueError(f"{workdir} is not a workdir (no {' or '.join(missing)})")


def series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
  """{key: [(step, value), ...]} of every numeric key of metrics records, keys in order of first appearance."""
  out: dict[str, list[tuple[int, float]]] = {}
  for record in records:
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        out.setdefault(key, []).append((record["step"], float(value)))
  return out


def _number(value: float) -> str:
  return f"{value:.4g}"


def _read(workdir: str) -> tuple[dict, dict[str, list[tuple[int, float]]]]:
  check_workdir(workdir)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  return config, series(metrics_lib.read(workdir))


def _model_line(config: dict) -> str:
  try:
    model = config_lib.model_config(config)
    return f"{model.num_params():,} parameters, {model.n_layers} layers, d_model {model.d_model}"
  except (KeyError, TypeError, ValueError):  # an older or hand-written config.json: not cheaply known
    return "n/a"


def _header(workdir: str, config: dict, points: dict, summary: dict | None) -> list[str]:
  stage = config.get("stage", "n/a")
  steps = max((s for values in points.values() for s, _ in values), default=0)
  seconds = (summary or {}).get("seconds")
  lines = [f"# {stage} report: {os.path.basename(os.path.normpath(workdir))}", "",
           f"- stage: {stage}", f"- init_from: {config.get('init_from') or 'none'}",
           f"- model: {_model_line(config)}", f"- steps: {steps}",
           f"- wall time: {f'{seconds:.1f} s' if seconds is not None else 'n/a (only the run itself knows it)'}"]
  speeds = []
  for key, name in THROUGHPUT.items():
    values = [v for _, v in points.get(key, ()) if math.isfinite(v)]
    if values:
      median = statistics.median(values)
      speeds.append(f"MFU {median:.2%}" if key == "mfu" else f"{_number(median)} {name}")
  if speeds:
    lines.append("- throughput (median over the logged steps): " + ", ".join(speeds))
  return lines


def _table(title: str, points: dict) -> list[str]:
  lines = [f"## {title}", ""]
  if not points:
    return lines + ["Nothing logged.", ""]
  lines += ["| metric | first (step) | last (step) | change | points |", "|---|---|---|---|---|"]
  for key, values in points.items():
    (first_step, first), (last_step, last) = values[0], values[-1]
    lines.append(f"| {key} | {_number(first)} ({first_step}) | {_number(last)} ({last_step}) | "
                 f"{last - first:+.4g} | {len(values)} |")
  return lines + [""]


def _family(key: str) -> str:
  return re.sub(r"@\d+$", "@k", key)  # eval/arithmetic/pass@1, pass@2, ... share one panel


def _plottable(values: list[tuple[int, float]]) -> bool:
  return len(values) >= 2 and len({v for _, v in values}) > 1


def _steps_axis(ax):
  ax.set_xlabel("step")
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)


def _plot_loss(figure_cls, points: dict, path: str):
  fig = figure_cls(figsize=(7, 4), layout="constrained")
  ax = fig.subplots()
  steps, losses = zip(*points["loss"])
  lines = ax.plot(steps, losses, color="C0", label="loss")
  _steps_axis(ax)
  ax.set_ylabel("training loss")
  top = ax
  if len(points.get("lr", ())) >= 2:
    top = ax.twinx()  # drawn over ax: the legend goes on it
    lines += top.plot(*zip(*points["lr"]), color="C1", linestyle="--", label="lr")
    top.set_ylabel("learning rate")
  top.legend(lines, [line.get_label() for line in lines])
  fig.savefig(path, dpi=100)


def _plot_eval(figure_cls, families: dict[str, dict], path: str):
  cols = min(3, len(families))
  rows = -(-len(families) // cols)
  fig = figure_cls(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
  for ax, (family, members) in zip(axes, families.items()):
    for key, values in members.items():
      ax.plot(*zip(*values), marker="o", label=key.rsplit("/", 1)[-1])
    ax.set_title(family, fontsize=10)
    _steps_axis(ax)
    if len(members) > 1:
      ax.legend(fontsize=8)
  for ax in axes[len(families):]:
    ax.set_visible(False)
  fig.savefig(path, dpi=100)


def _plots(workdir: str, train: dict, evals: dict) -> list[str]:
  """Draws workdir/report/*.png; returns the markdown that shows them (or says why there are none)."""
  directory = os.path.join(workdir, "report")
  for name in PLOTS:  # a plot this run no longer has must not outlive it
    if os.path.exists(os.path.join(directory, name)):
      os.remove(os.path.join(directory, name))
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError:
    return ["Plots: none, matplotlib is not installed (pip install -e '.[dev]').", ""]
  families: dict[str, dict] = {}
  for key, values in evals.items():
    if _plottable(values):
      families.setdefault(_family(key), {})[key] = values
  lines = []
  os.makedirs(directory, exist_ok=True)
  if len(train.get("loss", ())) >= 2:
    _plot_loss(Figure, train, os.path.join(directory, "loss.png"))
    lines += ["![training loss and learning rate](report/loss.png)", ""]
  if families:
    _plot_eval(Figure, families, os.path.join(directory, "eval.png"))
    lines += ["![evaluation](report/eval.png)", ""]
  table_only = [key for key, values in evals.items() if not _plottable(values)]
  if table_only:
    lines += ["In the table only (fewer than 2 points, or one value throughout): " + ", ".join(table_only), ""]
  return lines


def write(workdir: str, summary: dict | None = None) -> str:
  """Writes workdir/report.md and its plots under workdir/report/; returns the path of report.md.

  `summary`: the dict a stage's run returns (llm_jax.train), for its wall time ("seconds").
  """
  config, points = _read(workdir)
  train = {k: v for k, v in points.items() if not k.startswith("eval/") and k not in THROUGHPUT}
  evals = {k: v for k, v in points.items() if k.startswith("eval/")}
  lines = _header(workdir, config, points, summary) + [""]
  lines += _table("Training", train) + _table("Evaluation", evals)
  lines += ["## Plots", ""] + _plots(workdir, train, evals)
  path = os.path.join(workdir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path


def _card_rows(workdir: str, stage: str, points: dict) -> list[str]:
  rows = []
  for pattern, better, *against in HEADLINES.get(stage, ()):
    keys = sorted(k for k in points if fnmatch.fnmatchcase(k, pattern))
    if against:
      old, new, needed = against[0]
      keys = [k for k in keys if k.replace(old, needed) in points]
      if not keys:
        continue
    for key in keys or [pattern]:
      values = points.get(key, [])
      start = None  # (label, value) to compare the last value with
      if against:  # the last value of a sibling key, labelled with its name after the "/"
        baseline = key.replace(old, new)
        if values and points.get(baseline):
          start = (baseline.rsplit("/", 1)[-1], points[baseline][-1][1])
      elif len(values) >= 2:
        start = values[0]
      before = f"{_number(start[1])} ({start[0]})" if start else "n/a"
      after = f"{_number(values[-1][1])} ({values[-1][0]})" if values else "n/a"
      verdict = "n/a"
      if start:
        first, last = start[1], values[-1][1]
        verdict = "✓" if (last < first if better == "lower" else last > first) else "✗"
      rows.append(f"| {stage} | {workdir} | {key} | {better} | {before} | {after} | {verdict} |")
  return rows or [f"| {stage} | {workdir} | n/a | n/a | n/a | n/a | n/a |"]


def card(workdirs: Sequence[str], out: str | None = None) -> str:
  """One markdown table over workdirs in pipeline order: each stage's HEADLINES metrics, first -> last and
  whether they moved the better way (n/a: never logged, or logged once). Also written to `out` if given."""
  runs = []
  for workdir in workdirs:
    config, points = _read(workdir)
    runs.append((str(workdir), config.get("stage", "n/a"), points))
  order = {stage: i for i, stage in enumerate(config_lib.STAGES)}
  runs.sort(key=lambda run: order.get(run[1], len(order)))  # stable: workdirs of one stage keep their order
  lines = ["# Report card", "",
           "First and last logged value of each stage's headline metrics (step in parentheses; SFT's tool tasks: "
           "tools off against tools on); ✓ when it moved the better way.", "",
           "| stage | workdir | metric | better | before | after | ✓/✗ |", "|---|---|---|---|---|---|---|"]
  for workdir, stage, points in runs:
    lines += _card_rows(workdir, stage, points)
  text = "\n".join(lines) + "\n"
  if out:
    with open(out, "w", encoding="utf-8") as f:
      f.write(text)
  return text


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m llm_jax.eval.report",
                                   description="Writes WORKDIR/report.md (+ plots) for each workdir and, with "
                                   "--card, one report card across them; prints the paths.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--card", metavar="OUT.md", help="also write the combined report card here")
  args = parser.parse_args(argv)
  try:
    for workdir in args.workdirs:  # all checked before anything is written
      check_workdir(workdir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for workdir in args.workdirs:
    print(write(workdir))
  if args.card:
    card(args.workdirs, args.card)
    print(args.card)
  return 0


if __name__ == "__main__":
  sys.exit(main())
