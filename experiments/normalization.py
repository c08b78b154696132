"""Claim (seed, "layer normalization & residual connections"): where the norm sits decides how hard you
can push the learning rate; which norm it is matters less.

    python experiments/normalization.py [--steps 100]

Pre-LN vs post-LN x LayerNorm vs RMSNorm, each over a learning-rate sweep, on a 6-layer version of the
small decoder of experiments/common.py with a short warmup (5% of steps). A run *trains* when its loss
never turns non-finite and its final held-out bits per byte is within 10% of the best run of the whole
sweep: failing runs here do not blow up, they stall on a plateau near 3.1 bpb (~6 nats/token, what a model
that learnt little beyond token frequencies reaches), which is as useless as a divergence. The table gives
each combination's final eval bits per byte per learning rate and the largest learning rate that trains.
Writes experiments/normalization.{md,json,png}. Measured: 15 minutes for the 16 runs on 2 CPU cores.
"""

import argparse
import math
import os

import common

LRS = (2e-3, 6e-3, 2e-2, 6e-2)
COMBOS = [(pos, norm) for pos in ("pre", "post") for norm in ("rmsnorm", "layernorm")]


def _largest(stable_lrs) -> str:
  if not stable_lrs:
    return f"< {LRS[0]:g}"
  return f">= {LRS[-1]:g} (sweep max)" if max(stable_lrs) == LRS[-1] else f"{max(stable_lrs):g}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/normalization")
  args = parser.parse_args()
  base = common.small_config(args.steps)
  tokenizer_dir = common.shared_tokenizer(args.workdir, base)
  results, rows = {}, []
  for position, norm in COMBOS:
    name = f"{position}-{norm}"
    results[name] = {}
    for lr in LRS:
      config = common.small_config(args.steps)
      config.model.n_layers = 6
      config.model.norm, config.model.norm_position = norm, position
      config.train.lr = lr
      out = common.run(config, os.path.join(args.workdir, f"{name}_lr{lr:g}"), tokenizer_dir)
      losses = [m["loss"] for m in out["records"] if "loss" in m]
      final = [m for m in out["records"] if "eval/loss" in m][-1]
      results[name][lr] = {"eval/bpb": final["eval/bpb"], "eval/loss": final["eval/loss"],
                           "finite": all(math.isfinite(x) for x in losses) and math.isfinite(final["eval/loss"]),
                           "max_train_loss": max(losses)}
  best = min(r["eval/bpb"] for by_lr in results.values() for r in by_lr.values())
  for name, by_lr in results.items():
    for r in by_lr.values():
      r["trains"] = r["finite"] and r["eval/bpb"] <= 1.1 * best
    rows.append([name] + [f"{by_lr[lr]['eval/bpb']:.3f}" + ("" if by_lr[lr]["trains"] else " ✗") for lr in LRS]
                + [_largest([lr for lr in LRS if by_lr[lr]["trains"]])])
  here = os.path.dirname(os.path.abspath(__file__))
  common.save_json(os.path.join(here, "normalization.json"), {k: {str(lr): v for lr, v in r.items()}
                                                             for k, r in results.items()})
  common.write_table(
      os.path.join(here, "normalization.md"), "Norm placement and type vs learning rate",
      ["norm"] + [f"lr {lr:g}" for lr in LRS] + ["largest lr that trains"], rows,
      [f"Cells: final held-out bits per byte; ✗ marks a run that does not train (non-finite loss, or bpb more "
       f"than 10% above the sweep's best, {best:.3f}).",
       f"6 layers, d_model 128, {args.steps} steps x 16 x 128 tokens, warmup {max(1, args.steps // 20)} steps, "
       "AdamW (b2 0.95, clip 1.0), cosine decay. "
       f"Command: `python experiments/normalization.py --steps {args.steps}` (2-core CPU)."])
  plt = common.pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, by_lr in results.items():
    ax.plot(LRS, [min(by_lr[lr]["eval/bpb"], 6.0) for lr in LRS], "o-", label=name)
  ax.set(xscale="log", xlabel="peak learning rate", ylabel="final eval bits per byte (capped at 6)")
  ax.set_xticks(LRS, [f"{lr:g}" for lr in LRS])
  ax.minorticks_off()
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(here, "normalization.png"), dpi=100)


if __name__ == "__main__":
  main()
