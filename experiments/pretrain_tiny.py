"""Claim: the tiny config learns the built-in corpus on a CPU in minutes.

    python experiments/pretrain_tiny.py [--workdir runs/tiny]

Runs `configs/tiny.py` (or reuses a finished workdir), then writes `experiments/pretrain_tiny.md` (eval
bits-per-byte per evaluation against the step-0 and order-0 baselines, and the checks of issue #2) and
`experiments/pretrain_tiny.png` (train loss and eval bpb). CPU budget: ~8 minutes on 2 cores.
"""

import argparse
import json
import os
import subprocess
import sys

import common
from common import ROOT, metrics_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "tiny"))
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "pretrain_tiny"))
  args = parser.parse_args()
  subprocess.run([sys.executable, "-m", "llm_jax.train", "--config", os.path.join(ROOT, "configs", "tiny.py"),
                  "--workdir", args.workdir], cwd=ROOT, check=True)
  records = metrics_lib.read(args.workdir)
  evals = [m for m in records if "eval/bpb" in m]
  train = [m for m in records if "loss" in m]
  first, final, order0 = evals[0]["eval/bpb"], evals[-1]["eval/bpb"], evals[-1]["eval/order0_bpb"]
  speed = [m["tokens_per_sec"] for m in train if "tokens_per_sec" in m]
  mfu = [m["mfu"] for m in train if "mfu" in m]
  lines = [
      "# Tiny pretraining on the built-in corpus", "",
      f"Command: `python -m llm_jax.train --config configs/tiny.py`; workdir `{os.path.relpath(args.workdir, ROOT)}`.",
      "", "| step | eval/loss (nats/token) | eval/bpb | share of step-0 bpb |", "|---:|---:|---:|---:|"]
  lines += [f"| {m['step']} | {m['eval/loss']:.4f} | {m['eval/bpb']:.4f} | {m['eval/bpb'] / first:.1%} |" for m in evals]
  lines += ["", f"- order-0 byte entropy of the validation text: {order0:.4f} bits/byte",
            f"- final eval/bpb {final:.4f} = {final / first:.1%} of step 0 (target <= 60%): "
            f"{'PASS' if final <= 0.6 * first else 'FAIL'}",
            f"- below the order-0 baseline: {'PASS' if final < order0 else 'FAIL'}",
            f"- median throughput {sorted(speed)[len(speed) // 2]:.0f} tokens/s, median MFU "
            f"{sorted(mfu)[len(mfu) // 2]:.3f} (of the measured matmul peak)" if speed else "",
            "", "Samples (`samples.txt`):", "", "```"]
  with open(os.path.join(args.workdir, "samples.txt"), encoding="utf-8") as f:
    lines += [f.read().rstrip(), "```", ""]
  with open(args.out + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  plt = common.pyplot()
  if plt is not None:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot([m["step"] for m in train], [m["loss"] for m in train])
    ax[0].set(xlabel="step", ylabel="train loss (nats/token)")
    ax[1].plot([m["step"] for m in evals], [m["eval/bpb"] for m in evals], "o-", label="eval/bpb")
    ax[1].axhline(order0, color="gray", ls="--", label="order-0 byte entropy")
    ax[1].set(xlabel="step", ylabel="bits per byte")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=100)
  print(json.dumps({"eval/bpb@0": first, "eval/bpb": final, "order0_bpb": order0}))


if __name__ == "__main__":
  main()
