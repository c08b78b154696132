"""Claims (issue #11): RL with verifiable rewards raises the fine-tuned tiny assistant's held-out arithmetic
accuracy (pass@1) over its SFT starting point; GRPO, Dr.GRPO and DAPO compared at an equal number of steps.

    python experiments/reasoning_rl.py [--sft runs/sft_tiny] [--variants grpo,dr_grpo,dapo] [--steps 60]

Starts from --sft (pretraining configs/tiny.py and fine-tuning configs/sft_tiny.py into runs/ first if that
run is not there), then runs configs/grpo_tiny.py once per variant (llm_jax/rl/grpo.py VARIANTS), each
from the same SFT weights with the same problems per step. Held-out greedy accuracy, pass@k (8 answers per
problem at temperature 1) and answer length are measured at steps 0, 20, 40, 60. Writes
experiments/reasoning_rl.{md,json,png}. Finished runs are reused.

CPU budget (2 cores): GRPO took 8.1 min alone (~5.5 s per step: rollouts ~1.2 s, log-probs and two updates
~4 s; 4 evaluations of ~30 s); Dr.GRPO does the same without the reference pass; DAPO samples about twice
as many answers (measured 2026-12-03; results in reasoning_rl.md).
"""

import argparse
import json
import os
import time

from common import ROOT, config_lib, metrics_lib, pretrain  # common puts the repository on sys.path
from llm_jax import train as train_lib
from llm_jax.rl import grpo

HERE = os.path.dirname(os.path.abspath(__file__))


def _config(name: str, steps: int, sft: str):
  c = config_lib.load_file(os.path.join(ROOT, "configs", "grpo_tiny.py"))
  c.init_from, c.train.progress, c.train.steps = sft, False, steps
  for key, value in grpo.VARIANTS[name].items():
    c.grpo[key] = value
  config_lib.validate(c)
  return c


def _ensure_sft(sft: str):
  """Pretrains and fine-tunes the starting point unless --sft holds a finished run."""
  if os.path.isdir(os.path.join(sft, "checkpoints")):
    return
  base = os.path.join(os.path.dirname(sft), "tiny")
  c = config_lib.load_file(os.path.join(ROOT, "configs", "tiny.py"))
  c.train.progress = False
  pretrain(c, base)
  c = config_lib.load_file(os.path.join(ROOT, "configs", "sft_tiny.py"))
  c.init_from, c.train.progress = base, False
  pretrain(c, sft)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sft", default=os.path.join(ROOT, "runs", "sft_tiny"))
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/reasoning_rl")
  parser.add_argument("--variants", default="grpo,dr_grpo,dapo")
  parser.add_argument("--steps", type=int, default=60)
  args = parser.parse_args()
  names = [v.strip() for v in args.variants.split(",") if v.strip()]
  for name in names:
    if name not in grpo.VARIANTS:
      parser.error(f"--variants: unknown {name!r}; known: {', '.join(grpo.VARIANTS)}")
  _ensure_sft(args.sft)
  runs = {}
  for name in names:
    workdir = os.path.join(args.workdir, name)
    t0 = time.time()
    summary = train_lib.STAGES["grpo"](_config(name, args.steps, args.sft), workdir)
    records = metrics_lib.read(workdir)
    runs[name] = {"settings": grpo.VARIANTS[name], "seconds": None if summary.get("complete") else time.time() - t0,
                  "evals": [r for r in records if any(k.startswith("eval/") for k in r)],
                  "train": [r for r in records if "loss" in r]}
    print(name, json.dumps(runs[name]["evals"][-1]), flush=True)
  with open(os.path.join(HERE, "reasoning_rl.json"), "w", encoding="utf-8") as f:
    json.dump({"sft": args.sft, "steps": args.steps, "runs": runs}, f, indent=1)
  _plot(runs, os.path.join(HERE, "reasoning_rl.png"))
  _write_markdown(runs, args, os.path.join(HERE, "reasoning_rl.md"))


def _series(records, key):
  return [r["step"] for r in records if key in r], [r[key] for r in records if key in r]


def _plot(runs: dict, path: str):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for i, (name, run) in enumerate(runs.items()):
    color = f"C{i}"
    axes[0].plot(*_series(run["evals"], "eval/arithmetic/pass@1"), marker="o", color=color,
                 label=f"{name} pass@1 (T=1)")
    axes[0].plot(*_series(run["evals"], "eval/arithmetic/greedy"), marker="x", linestyle="--", color=color,
                 label=f"{name} greedy")
    axes[1].plot(*_series(run["train"], "reward"), color=color, label=name)
    axes[2].plot(*_series(run["train"], "length"), color=color, label=name)
  axes[0].set(title="held-out arithmetic", xlabel="step", ylabel="accuracy")
  axes[1].set(title="mean reward of the step's rollouts", xlabel="step")
  axes[2].set(title="answer length (tokens the model wrote)", xlabel="step")
  for ax in axes:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _write_markdown(runs: dict, args, path: str):
  lines = ["# Reasoning RL with verifiable rewards: GRPO, Dr.GRPO, DAPO", "",
           f"`python experiments/reasoning_rl.py --steps {args.steps}`: from the fine-tuned tiny assistant "
           "(configs/sft_tiny.py), configs/grpo_tiny.py per variant; 8 problems x 8 answers per step; held-out "
           "arithmetic (100 problems, the task's validation split, solved through the calculator): greedy "
           "accuracy and pass@k from 8 answers at temperature 1.", "",
           "| variant | settings | greedy (step 0 -> last) | pass@1 | pass@8 | length | final KL | answers "
           "sampled | time |", "|---|---|---|---|---|---|---|---|---|"]
  for name, run in runs.items():
    first, last = run["evals"][0], run["evals"][-1]
    get = lambda r, k: r.get(f"eval/arithmetic/{k}", float("nan"))
    settings = ", ".join(f"{k} {v}" for k, v in run["settings"].items())
    secs = f"{run['seconds'] / 60:.1f} min" if run["seconds"] else "reused"
    lines.append(f"| {name} | {settings} | {get(first, 'greedy'):.2f} -> {get(last, 'greedy'):.2f} | "
                 f"{get(first, 'pass@1'):.3f} -> {get(last, 'pass@1'):.3f} | {get(first, 'pass@8'):.2f} -> "
                 f"{get(last, 'pass@8'):.2f} | {get(first, 'length'):.1f} -> {get(last, 'length'):.1f} | "
                 f"{run['train'][-1]['kl']:.4f} | {sum(r['rollouts'] for r in run['train']):,} | {secs} |")
  lines += ["", "## Held-out accuracy by step", "", "| variant | step | greedy | pass@1 | pass@2 | pass@4 | pass@8 | "
            "length |", "|---|---|---|---|---|---|---|---|"]
  for name, run in runs.items():
    for r in run["evals"]:
      lines.append(f"| {name} | {r['step']} | " + " | ".join(
          f"{r.get(f'eval/arithmetic/{k}', float('nan')):.3f}" for k in ("greedy", "pass@1", "pass@2", "pass@4",
                                                                       "pass@8", "length")) + " |")
  lines += ["", "![pass@1, reward and length by step](reasoning_rl.png)", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


if __name__ == "__main__":
  main()
