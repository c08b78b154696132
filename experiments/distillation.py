"""Claim (issue #7): a small student learns more from a trained teacher's logits than from the data alone,
at equal steps and equal data.

    python experiments/distillation.py [--teacher runs/tiny] [--steps 250]

Trains the teacher (configs/tiny.py, 5.25M parameters, 250 steps; a finished workdir is reused), then the
1.44M-parameter student of configs/distill_tiny.py twice from the same initialisation, on the same batches
(same seed, the teacher's tokenizer) for the same number of steps: (a) stage pretrain, next-token
cross-entropy on the data; (b) stage distill, alpha 0.5 x tau^2 x KL to the teacher at tau 2 + 0.5 x
cross-entropy. Writes experiments/distillation.{md,json,png}: final held-out bits per byte of the teacher
and both students, and eval/bpb against step for both students.

CPU budget: about 12 minutes on 2 idle cores (teacher ~6 min, as in configs/tiny.py; student from data ~2 min;
distilled student ~4 min, as every step also runs the teacher's forward pass), about 6 minutes with the
teacher reused. Measured 2026-11-25: 18.5 minutes (teacher 9.3, students 2.8 and 6.3), on 2 cores that other
jobs were sharing.
"""

import argparse
import os
import shutil
import time

import common
from common import ROOT, config_lib, metrics_lib, pretrain

STUDENTS = ("student, from data", "student, distilled")


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2] if xs else None


def _run(config, workdir: str, tokenizer_dir: str | None = None) -> dict:
  """Trains (or reuses a finished) run, with `tokenizer_dir` copied in first; its records and wall time."""
  if tokenizer_dir and not os.path.exists(os.path.join(workdir, "tokenizer")):
    shutil.copytree(tokenizer_dir, os.path.join(workdir, "tokenizer"))
  t0 = time.time()
  reused = bool(pretrain(config, workdir).get("complete"))
  return {"records": metrics_lib.read(workdir), "seconds": None if reused else time.time() - t0}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--teacher", default=os.path.join(ROOT, "runs", "tiny"))
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/distillation")
  parser.add_argument("--steps", type=int, default=250)
  args = parser.parse_args()

  teacher_config = config_lib.load_file(os.path.join(ROOT, "configs", "tiny.py"))
  teacher_config.train.progress = False
  runs = {"teacher": _run(teacher_config, args.teacher)}

  def student(stage: str):
    c = config_lib.load_file(os.path.join(ROOT, "configs", "distill_tiny.py"))
    c.stage, c.distill.teacher = stage, args.teacher
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = args.steps, 25, args.steps
    c.train.progress = False
    c.sample.prompts = ()
    return c

  # Both students get the teacher's tokenizer in their workdir (stage distill would copy it in itself).
  tokenizer_dir = os.path.join(args.teacher, "tokenizer")
  student_config = student("distill")
  runs["student, from data"] = _run(student("pretrain"), os.path.join(args.workdir, "from_data"), tokenizer_dir)
  runs["student, distilled"] = _run(student_config, os.path.join(args.workdir, "distilled"), tokenizer_dir)

  rows, results = [], {}
  for name, run in runs.items():
    model_cfg = config_lib.model_config(teacher_config if name == "teacher" else student_config)
    evals = [m for m in run["records"] if "eval/bpb" in m]
    r = results[name] = {
        "params": model_cfg.num_params(), "steps": evals[-1]["step"], "eval/bpb": evals[-1]["eval/bpb"],
        "eval/bpb@0": evals[0]["eval/bpb"], "seconds": run["seconds"] and round(run["seconds"], 1),
        "median_tokens_per_sec": _median([m["tokens_per_sec"] for m in run["records"] if "tokens_per_sec" in m]),
        "curve": [[m["step"], m["eval/bpb"]] for m in evals]}
    rows.append([name, f"{r['params'] / 1e6:.2f}M", r["steps"], f"{r['eval/bpb@0']:.3f}", f"{r['eval/bpb']:.4f}",
                 "reused" if r["seconds"] is None else f"{r['seconds'] / 60:.1f} min",
                 f"{r['median_tokens_per_sec']:.0f}" if r["median_tokens_per_sec"] else "-"])
  gain = results["student, from data"]["eval/bpb"] - results["student, distilled"]["eval/bpb"]
  gap = results["student, from data"]["eval/bpb"] - results["teacher"]["eval/bpb"]
  order0 = [m for m in runs["teacher"]["records"] if "eval/order0_bpb" in m][-1]["eval/order0_bpb"]
  here = os.path.dirname(os.path.abspath(__file__))
  common.save_json(os.path.join(here, "distillation.json"), results)
  common.write_table(
      os.path.join(here, "distillation.md"), "Distillation: a 1.44M-parameter student of the 5.25M tiny model",
      ["model", "params", "steps", "eval/bpb at step 0", "final eval/bpb", "wall time", "tokens/s (median)"], rows,
      [f"Distilled minus from-data final eval/bpb: {-gain:+.4f} bits/byte"
       + (f" ({gain / gap:.0%} of the from-data student's gap to the teacher closed)." if gap > 0 else "."),
       "",
       f"Both students: configs/distill_tiny.py (2 layers, d_model 128, 2 query / 1 kv heads of 64, SwiGLU 384), "
       f"{args.steps} steps x 16 x 256 tokens from the same initialisation, on the same batches, with the teacher's "
       f"tokenizer; distilled with alpha {student_config.distill.alpha} and tau {student_config.distill.tau}. "
       f"Teacher: configs/tiny.py, {results['teacher']['steps']} steps. Validation order-0 byte entropy: "
       f"{order0:.3f} bits/byte. Wall time includes compilation and evaluations (every 25 steps for the "
       "students); the distilled student's tokens/s counts its own tokens, though each step also runs the "
       "teacher's forward pass: at equal wall time rather than equal steps, the student from data would get "
       "about twice the steps.",
       f"Command: `python experiments/distillation.py --steps {args.steps}` (2-core CPU, shared with other work "
       "while measured, so times are approximate)."])
  plt = common.pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name in STUDENTS:
    ax.plot(*zip(*results[name]["curve"]), "o-", ms=3, label=name)
  ax.axhline(results["teacher"]["eval/bpb"], color="gray", ls="--", label="teacher (final)")
  ax.set(xlabel="step", ylabel="eval bits per byte")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(here, "distillation.png"), dpi=100)


if __name__ == "__main__":
  main()
