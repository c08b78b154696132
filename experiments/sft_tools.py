"""Claims (issue #8): after a short SFT on synthetic tool conversations, the tiny model solves held-out
arithmetic with the calculator and letter counting with sandboxed Python far better with tools on than off;
whether LoRA on under 5% of the parameters gets close to full fine-tuning (at 900 steps it does not:
sft_tools.md).

    python experiments/sft_tools.py [--base runs/tiny] [--lora 8:1e-2 --lora 12:1e-2 --lora 16:1e-2]
    python experiments/sft_tools.py --mid 450 --lora 32:1e-2:q+k+v+o      # with a mid-training stage first

Pretrains configs/tiny.py into --base unless that run is finished, then fine-tunes it with configs/sft_tiny.py
(same conversations, same order, same steps): full fine-tuning, and one LoRA run per --lora (rank, learning
rate, targets; the chat/tool control tokens' embedding rows always train too). Finished runs are reused.
Each run is evaluated (at its end, or again from its last checkpoint when reused or with --problems) on the
same 100 (--problems) held-out problems per checked task, with tools on and with tools off (the model then
writes the tool's output itself). Writes experiments/sft_tools.{md,json}: accuracy per task and mode, the
exact-call rate, held-out loss on assistant tokens, trainable parameters, wall time.

The tiny base cannot copy (it has no induction heads), and LoRA cannot build the copy that counting and
spelling need (sft_tools.md). `--mid STEPS` first fine-tunes the base fully on the `repeat` task alone (say
a quoted text back: copying, and nothing of the checked tasks), then runs every SFT from that model, so full
fine-tuning and LoRA start from a base that copies; those results go to experiments/sft_tools_mid.{md,json}.

CPU budget on this 2-core machine: pretraining ~4 min, each 900-step SFT run ~13 min alone including its
evaluation (2026-12-04); results in sft_tools.md.
"""

import argparse
import json
import os
import time

import jax

from common import ROOT, config_lib, metrics_lib, pretrain  # common puts the repository on sys.path
from llm_jax.eval import tasks as task_eval
from llm_jax.model import lora
from llm_jax.training import sft

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(config, workdir: str) -> dict:
  t0 = time.time()
  summary = pretrain(config, workdir)
  seconds = None if summary.get("complete") else round(time.time() - t0, 1)
  records = metrics_lib.read(workdir)
  return {"records": records, "seconds": seconds, "summary": summary}


def _last(records, key):
  values = [r[key] for r in records if key in r]
  return values[-1] if values else None


def _trainable(config, base_workdir: str) -> tuple[int, int]:
  """(trainable parameters, all parameters the model runs with) for the config (LoRA or full)."""
  import llm_jax  # pylint: disable=import-outside-toplevel
  _, base, tok = llm_jax.load(base_workdir)
  n_base = lora.num_params(base)
  if not config.lora.rank:
    return n_base, n_base
  init_adapters, _ = sft.lora_fns(config, tok)
  adapters = jax.eval_shape(init_adapters, jax.random.PRNGKey(0), base)
  n = lora.num_params(adapters)
  return n, n_base + n


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base", default=os.path.join(ROOT, "runs", "tiny"))
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/sft_tools")
  parser.add_argument("--mid", type=int, default=0, metavar="STEPS",
                      help="mid-training: first fine-tune the base fully for STEPS steps on the `repeat` task alone "
                           "(copying practice), then fine-tune that (full and LoRA) instead of the base; results go "
                           "to sft_tools_mid.{md,json} (0: none)")
  parser.add_argument("--problems", type=int, default=None,
                      help="held-out problems per task: every run is evaluated again from its checkpoint on this "
                           "many (default: configs/sft_tiny.py's sft.eval_problems, the runs' own evaluation)")
  parser.add_argument("--lora", action="append", default=None, metavar="RANK:LR[:TARGETS[:B_LR_RATIO]]",
                      help="a LoRA run (repeatable); TARGETS as lora.targets with '+' for ',' "
                           "(default, or empty: configs/sft_tiny.py's); B_LR_RATIO: LoRA+'s lora.b_lr_ratio "
                           "(default 1); default: --lora 8:1e-2")
  args = parser.parse_args()

  base_config = config_lib.load_file(os.path.join(ROOT, "configs", "tiny.py"))
  base_config.train.progress = False
  base = _run(base_config, args.base)
  init_from, workdir, mid = args.base, args.workdir, None
  if args.mid:
    c = config_lib.load_file(os.path.join(ROOT, "configs", "sft_tiny.py"))
    c.init_from, c.train.progress, c.sft.mixture, c.train.steps = args.base, False, "repeat:1", args.mid
    c.train.eval_every = c.train.checkpoint_every = max(1, args.mid // 3)
    config_lib.validate(c)
    workdir = os.path.join(args.workdir, f"mid_{args.mid}")
    init_from = os.path.join(workdir, "mid")
    mid = _run(c, init_from)

  def sft_config(spec: str | None):
    c = config_lib.load_file(os.path.join(ROOT, "configs", "sft_tiny.py"))
    c.init_from, c.train.progress = init_from, False
    if spec:
      rank, lr, *rest = spec.split(":")
      c.lora.rank, c.train.lr = int(rank), float(lr)
      c.lora.targets = rest[0].replace("+", ",") if rest and rest[0] else c.lora.targets
      c.lora.b_lr_ratio = float(rest[1]) if len(rest) > 1 else 1.0
    config_lib.validate(c)
    return c

  variants = {"full fine-tuning": sft_config(None)}
  for spec in args.lora or ["8:1e-2"]:
    c = sft_config(spec)
    plus = f", LoRA+ b x{c.lora.b_lr_ratio:g}" if c.lora.b_lr_ratio != 1 else ""
    variants[f"LoRA rank {c.lora.rank}, lr {c.train.lr:g}, on {c.lora.targets}{plus}"] = c  # one row per --lora
  rows = {}
  for name, c in variants.items():
    plus = f"_b{c.lora.b_lr_ratio:g}" if c.lora.b_lr_ratio != 1 else ""
    run_dir = os.path.join(workdir, f"lora_{c.lora.rank}_{c.train.lr:g}_{c.lora.targets.replace(',', '-')}{plus}"
                           if c.lora.rank else "full")
    out = _run(c, run_dir)
    trainable, total = _trainable(c, init_from)
    accuracy = {k[5:]: v for k, v in out["summary"].items() if k.startswith("eval/") and k.count("/") == 2}
    if accuracy and args.problems is None:  # a fresh run evaluated itself at its end (in the run's time)
      eval_seconds = None
      with open(os.path.join(run_dir, "samples.txt"), encoding="utf-8") as f:
        samples = f.read()
    else:  # a reused run, or --problems: evaluated again from its checkpoint
      t0 = time.time()
      accuracy, transcripts = task_eval.evaluate_workdir(run_dir, problems=args.problems)
      eval_seconds, samples = round(time.time() - t0, 1), "\n".join(transcripts)
    rows[name] = {"trainable": trainable, "total": total, "lr": c.train.lr, "seconds": out["seconds"],
                  "eval_seconds": eval_seconds, "eval/loss": _last(out["records"], "eval/loss"),
                  "accuracy": accuracy, "samples": samples}
    print(name, json.dumps({k: v for k, v in rows[name].items() if k != "samples"}), flush=True)

  problems = args.problems or variants["full fine-tuning"].sft.eval_problems
  result = {"base_seconds": base["seconds"], "base_bpb": _last(base["records"], "eval/bpb"), "problems": problems,
            "runs": rows}
  if mid:
    result["mid"] = {"steps": args.mid, "seconds": mid["seconds"], "eval/loss": _last(mid["records"], "eval/loss")}
  name = "sft_tools_mid" if mid else "sft_tools"
  with open(os.path.join(HERE, name + ".json"), "w", encoding="utf-8") as f:
    json.dump({**result, "runs": {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in rows.items()}},
              f, indent=1)
  _write_markdown(result, os.path.join(HERE, name + ".md"))


def _write_markdown(result: dict, path: str):
  runs = result["runs"]
  tasks = sorted({k.rsplit("/", 1)[0] for r in runs.values() for k in r["accuracy"] if k.endswith("/tools_on")})
  lines = ["# SFT with tools: tools on vs off, full fine-tuning vs LoRA", "",
           "`python experiments/sft_tools.py`: configs/tiny.py pretrained, then configs/sft_tiny.py; "
           f"{result['problems']} held-out problems per task, greedy. Accuracy with tools on / tools off "
           "(nothing runs: the model writes each tool output itself) / share of problems whose tool call is exactly "
           "the reference solution's.",
           "", "| run | trainable params | lr | held-out loss | " + " | ".join(tasks) + " | train time |",
           "|---|---|---|---|" + "---|" * len(tasks) + "---|"]
  for name, r in runs.items():
    get = lambda key: r["accuracy"].get(key, float("nan"))
    acc = [f"{get(t + '/tools_on'):.2f} / {get(t + '/tools_off'):.2f} / {get(t + '/exact_call'):.2f}" for t in tasks]
    secs = f"{r['seconds'] / 60:.1f} min" if r["seconds"] else "reused"
    lines.append(f"| {name} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.1f}%) | {r['lr']:g} | "
                 f"{r['eval/loss']:.3f} | " + " | ".join(acc) + f" | {secs} |")
  if "mid" in result:
    mid = result["mid"]
    lines[2] = lines[2].replace("configs/tiny.py pretrained, then", f"configs/tiny.py pretrained, mid-trained "
                                f"(`--mid {mid['steps']}`: full fine-tuning on `repeat` alone), then")
    lines += ["", f"Mid-training: {mid['steps']} steps, held-out loss {mid['eval/loss']:.3f}, "
              + (f"{mid['seconds'] / 60:.1f} min." if mid["seconds"] else "reused.")]
  base_secs = f"{result['base_seconds'] / 60:.1f} min" if result["base_seconds"] else "reused"
  eval_times = [f"{name} {r['eval_seconds'] / 60:.1f} min" if r["eval_seconds"] is not None
                else f"{name} in its train time" for name, r in runs.items()]
  lines += ["", f"Pretraining (configs/tiny.py): eval/bpb {result['base_bpb']:.3f}, {base_secs}. Evaluation: "
            + ", ".join(eval_times) + ".", ""]
  for name, r in runs.items():
    lines += [f"## Transcripts: {name}", "", "```", r["samples"].rstrip(), "```", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


if __name__ == "__main__":
  main()
