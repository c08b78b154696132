"""Claim (seed, "positional encodings vs rotary embeddings"): how position is injected matters, most of all
beyond the trained length.

    python experiments/positional_encodings.py [--steps 300]

Trains the same small decoder (experiments/common.py: ~2.5M parameters, rows of 128 tokens, 16 rows per
step) with rope / learned / sinusoidal / none (NoPE: only the causal mask tells position), plus a hybrid
row (rope attention blocks interleaved with causal depthwise-conv mixer blocks, layer_pattern "AC"), at an
equal step budget, and reports held-out bits per byte on the same 32,768 validation tokens read in rows of the train length
(128) and of twice it (256): the second gives every token more context, which helps only a model whose
positions extrapolate.
The learned table has 256 rows, of which training only ever reaches the first 128.
Writes experiments/positional_encodings.{md,json,png}. CPU budget: ~15 minutes on 2 cores.
"""

import argparse
import os

import common

VARIANTS = {
    "rope": dict(positions="rope"),
    "learned": dict(positions="learned"),
    "sinusoidal": dict(positions="sinusoidal"),
    "none (NoPE)": dict(positions="none"),
    "hybrid rope + conv (AC)": dict(positions="rope", layer_pattern="AC"),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/positional_encodings")
  args = parser.parse_args()
  seq_len = 128
  base = common.small_config(args.steps, seq_len)
  tokenizer_dir = common.shared_tokenizer(args.workdir, base)
  rows, results = [], {}
  for name, switches in VARIANTS.items():
    config = common.small_config(args.steps, seq_len)
    config.model.max_seq_len = 2 * seq_len
    for key, value in switches.items():
      config.model[key] = value
    workdir = os.path.join(args.workdir, name.split()[0])
    out = common.run(config, workdir, tokenizer_dir)
    results[name] = {"bpb@T": common.eval_bpb_at_length(config, workdir, seq_len),
                     "bpb@2T": common.eval_bpb_at_length(config, workdir, 2 * seq_len), "seconds": out["seconds"],
                     "params": common.config_lib.model_config(config).num_params()}
    r = results[name]
    rows.append([name, f"{r['params'] / 1e6:.2f}M", f"{r['bpb@T']:.4f}", f"{r['bpb@2T']:.4f}",
                 f"{r['bpb@2T'] - r['bpb@T']:+.4f}", f"{r['seconds']:.0f}"])
  here = os.path.dirname(os.path.abspath(__file__))
  common.save_json(os.path.join(here, "positional_encodings.json"), results)
  common.write_table(
      os.path.join(here, "positional_encodings.md"), "Positional encodings at equal budget",
      ["positions", "params", f"eval bpb @ {seq_len}", f"eval bpb @ {2 * seq_len}", "2x - 1x", "train s"], rows,
      [f"{args.steps} steps x 16 x {seq_len} tokens each; same tokenizer, data order and seed. "
       f"Command: `python experiments/positional_encodings.py --steps {args.steps}` (2-core CPU)."])
  plt = common.pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(7, 3.5))
  names = list(results)
  x = range(len(names))
  ax.bar([i - 0.2 for i in x], [results[n]["bpb@T"] for n in names], 0.4, label=f"at train length {seq_len}")
  ax.bar([i + 0.2 for i in x], [results[n]["bpb@2T"] for n in names], 0.4, label=f"at {2 * seq_len}")
  ax.set_xticks(list(x), names, rotation=15, fontsize=8)
  ax.set_ylabel("held-out bits per byte")
  ax.set_ylim(min(r["bpb@T"] for r in results.values()) * 0.9, None)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(here, "positional_encodings.png"), dpi=100)


if __name__ == "__main__":
  main()
