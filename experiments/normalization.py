"""Claim (seed, "layer normalization & residual connections"): where the norm sits decides how hard you
can push the learning rate; which norm it is matters less.

    python experiments/normalization.py [--steps 100]

Pre-LN vs post-LN x LayerNorm vs RMSNorm, each over a learning-rate sweep, on a 6-layer version of the
small decoder of experiments/common.py with a short warmup (5% of steps). A run is *stable* when its loss
never turns non-finite and its final held-out loss is below 90% of the initial one (ln vocab); the table
gives each combination's final eval bits per byte per learning rate and its largest stable learning rate.
Writes experiments/normalization.{md,json,png}. CPU budget: ~15 minutes on 2 cores.
"""

import argparse
import math
import os

import common

LRS = (2e-3, 6e-3, 2e-2, 6e-2)
COMBOS = [(pos, norm) for pos in ("pre", "post") for norm in ("rmsnorm", "layernorm")]


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
      stable = all(math.isfinite(x) for x in losses) and math.isfinite(final["eval/loss"]) and \
          final["eval/loss"] < 0.9 * math.log(config.tokenizer.vocab_size)
      results[name][lr] = {"eval/bpb": final["eval/bpb"], "eval/loss": final["eval/loss"], "stable": stable,
                           "max_train_loss": max(losses), "seconds": out["seconds"]}
    stable_lrs = [lr for lr in LRS if results[name][lr]["stable"]]
    rows.append([name] + [f"{results[name][lr]['eval/bpb']:.3f}" + ("" if results[name][lr]["stable"] else " ✗")
                          for lr in LRS] + [f"{max(stable_lrs):g}" if stable_lrs else "none"])
  here = os.path.dirname(os.path.abspath(__file__))
  common.save_json(os.path.join(here, "normalization.json"), {k: {str(lr): v for lr, v in r.items()}
                                                             for k, r in results.items()})
  common.write_table(
      os.path.join(here, "normalization.md"), "Norm placement and type vs learning rate",
      ["norm"] + [f"lr {lr:g}" for lr in LRS] + ["largest stable lr"], rows,
      ["Cells: final held-out bits per byte; ✗ marks an unstable run (non-finite loss, or final eval loss "
       "not below 90% of ln(vocab)).",
       f"6 layers, d_model 128, {args.steps} steps x 16 x 128 tokens, warmup {max(1, args.steps // 20)} steps, "
       "AdamW (b2 0.95, clip 1.0), cosine decay. "
       f"Command: `python experiments/normalization.py --steps {args.steps}` (2-core CPU)."])
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, by_lr in results.items():
    ax.plot(LRS, [min(by_lr[lr]["eval/bpb"], 6.0) for lr in LRS], "o-", label=name)
  ax.set(xscale="log", xlabel="peak learning rate", ylabel="final eval bits per byte (capped at 6)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(here, "normalization.png"), dpi=100)


if __name__ == "__main__":
  main()
