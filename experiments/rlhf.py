"""Claims (issue #10): a reward model learns held-out preferences (>= 85% accuracy); PPO against it and DPO on
the same pairs each raise the hidden gold reward of the tiny assistant's answers over the SFT model while KL
to it stays inside the configured budget; a long PPO run against the proxy reward model alone, with no KL
penalty, shows reward hacking (the proxy score rises while gold reward falls).

    python experiments/rlhf.py [--base runs/tiny] [--workdir /tmp/llm_jax_experiments/rlhf]

SFT (configs/sft_compare.py, from --base; configs/tiny.py pretrains it first if it is missing) -> reward model
(configs/reward_tiny.py) -> PPO (configs/ppo_tiny.py) and DPO (configs/dpo_tiny.py) -> the hacking run
(configs/ppo_tiny.py with kl_coef 0 and 150 steps). The task (llm_jax/data/tasks/compare.py): "which
of two numbers is larger?"; gold = the task's judge (right answer +1 / wrong -0.5, full sentence +0.3, one
"Hope this helps!" +0.2, -0.4 per repeated sentence, -0.05 per word over 12, -0.5 if cut off). The
preference pairs never show a repeated closing (the labellers' blind spot). Evaluations answer 100 held-out
prompts at temperature 1. Writes experiments/rlhf.{md,json,png}; finished runs are reused.
"""

import argparse
import json
import os
import time

from common import ROOT, config_lib, metrics_lib, pretrain  # common puts the repository on sys.path
from llm_jax import train as train_lib

HERE = os.path.dirname(os.path.abspath(__file__))
HACK = {"ppo.kl_coef": 0.0, "ppo.kl_target": 0.0, "train.steps": 150, "train.eval_every": 15}


def _config(name: str, overrides: dict):
  c = config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"))
  c.train.progress = False
  return config_lib.override(c, overrides)


def _stage(name: str, config_name: str, workdir: str, overrides: dict, runs: dict):
  t0 = time.time()
  config = _config(config_name, overrides)
  summary = train_lib.STAGES[config.stage](config, workdir)
  records = metrics_lib.read(workdir)
  runs[name] = {"config": config_name, "overrides": overrides, "workdir": workdir,
                "seconds": None if summary.get("complete") else round(time.time() - t0, 1),
                "evals": [r for r in records if any(k.startswith("eval/") for k in r)],
                "train": [r for r in records if "loss" in r]}
  print(name, json.dumps(runs[name]["evals"][-1]), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base", default=os.path.join(ROOT, "runs", "tiny"))
  parser.add_argument("--workdir", default="/tmp/llm_jax_experiments/rlhf")
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.base, "checkpoints")):
    c = config_lib.load_file(os.path.join(ROOT, "configs", "tiny.py"))
    c.train.progress = False
    pretrain(c, args.base)
  w = lambda name: os.path.join(args.workdir, name)
  runs: dict = {}
  _stage("sft", "sft_compare", w("sft"), {"init_from": args.base}, runs)
  _stage("reward", "reward_tiny", w("rm"), {"init_from": w("sft")}, runs)
  _stage("ppo", "ppo_tiny", w("ppo"), {"init_from": w("sft"), "ppo.reward_model": w("rm")}, runs)
  _stage("dpo", "dpo_tiny", w("dpo"), {"init_from": w("sft")}, runs)
  _stage("hack", "ppo_tiny", w("hack"), {"init_from": w("sft"), "ppo.reward_model": w("rm"), **HACK}, runs)
  _keep_timings(runs, os.path.join(HERE, "rlhf.json"))
  budget = _config("ppo_tiny", {}).ppo.kl_target
  with open(os.path.join(HERE, "rlhf.json"), "w", encoding="utf-8") as f:
    json.dump({"base": args.base, "kl_budget": budget, "runs": runs}, f, indent=1)
  _plot(runs, budget, os.path.join(HERE, "rlhf.png"))
  _write_markdown(runs, budget, os.path.join(HERE, "rlhf.md"))


def _keep_timings(runs: dict, path: str):
  """Runs reused from an earlier invocation keep the wall time that invocation recorded."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    before = json.load(f)["runs"]
  for name, run in runs.items():
    if run["seconds"] is None and before.get(name, {}).get("workdir") == run["workdir"]:
      run["seconds"] = before[name]["seconds"]


def _series(records, key):
  return [r["step"] for r in records if key in r], [r[key] for r in records if key in r]


def _plot(runs: dict, budget: float, path: str):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  for i, name in enumerate(("ppo", "dpo", "hack")):
    evals = runs[name]["evals"]
    axes[0].plot([r["eval/kl"] for r in evals], [r["eval/gold"] for r in evals], marker="o", color=f"C{i}",
                 label={"ppo": "PPO", "dpo": "DPO", "hack": "PPO, no KL penalty"}[name])
  axes[0].axvline(budget, color="gray", linestyle=":", label=f"KL budget {budget:g}")
  axes[0].set(title="held-out gold reward vs KL to the SFT model", xlabel="KL per answer (nats)", ylabel="gold")
  evals = runs["hack"]["evals"]
  ax = axes[1]
  ax.plot(*_series(evals, "eval/proxy"), marker="o", color="C3", label="proxy (reward model), left")
  ax.set(title="PPO with no KL penalty: reward hacking", xlabel="step", ylabel="proxy reward, held-out prompts")
  ax2 = ax.twinx()
  ax2.plot(*_series(evals, "eval/gold"), marker="s", color="C2", label="gold (hidden judge), right")
  ax2.plot(*_series(evals, "eval/correct"), marker="^", color="C0", linestyle="--", label="right answers, right")
  ax2.set_ylabel("gold reward / share right")
  ax2.legend(fontsize=7, loc="center right")
  reward = runs["reward"]["evals"]
  axes[2].plot(*_series(reward, "eval/accuracy"), marker="o", label="reward model")
  axes[2].plot(*_series(runs["dpo"]["evals"], "eval/accuracy"), marker="o", label="DPO implicit reward")
  axes[2].axhline(0.85, color="gray", linestyle=":", label="0.85")
  axes[2].set(title="held-out preference accuracy", xlabel="step", ylim=(0, 1))
  for a in axes:
    a.legend(fontsize=7, loc="lower right")
    a.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _num(record: dict, key: str) -> str:
  return f"{record[key]:.2f}" if key in record else "—"


def _write_markdown(runs: dict, budget: float, path: str):
  sft = runs["ppo"]["evals"][0]  # step 0 of PPO: the SFT model, answering the same held-out prompts
  reward = runs["reward"]["evals"][-1]
  time_of = lambda r: f"{r['seconds'] / 60:.1f} min" if r["seconds"] else "reused"
  lines = ["# RLHF: reward model, PPO, DPO, and reward hacking", "",
           "`python experiments/rlhf.py`: the tiny pretrained model (configs/tiny.py) fine-tuned on \"which "
           "number is larger?\" answers of mixed quality (configs/sft_compare.py), a reward model on 4,000 "
           "gold-labelled preference pairs (configs/reward_tiny.py), then PPO (configs/ppo_tiny.py) and DPO "
           "(configs/dpo_tiny.py) from the SFT model. Held-out: 200 pairs and 100 prompts (the task's "
           "validation split), answered at temperature 1. KL = sum over an answer's tokens of log pi - log "
           f"pi_SFT (nats per answer); the budget is ppo.kl_target = {budget:g}.", "",
           f"Reward model: held-out pair accuracy **{reward['eval/accuracy']:.3f}**, margin "
           f"{reward['eval/margin']:.2f} ({time_of(runs['reward'])}).", "",
           "| policy | gold | correct | KL | proxy (RM) | length | finished | time |",
           "|---|---|---|---|---|---|---|---|",
           f"| SFT | {sft['eval/gold']:.3f} | {sft['eval/correct']:.2f} | 0 | {sft['eval/proxy']:.2f} | "
           f"{sft['eval/length']:.1f} | {sft['eval/finished']:.2f} | {time_of(runs['sft'])} |"]
  for name, label in (("ppo", "PPO"), ("dpo", "DPO"), ("hack", "PPO, no KL penalty (hacking run)")):
    r, run = runs[name]["evals"][-1], runs[name]
    max_kl = max(e["eval/kl"] for e in run["evals"])
    lines.append(f"| {label} | {r['eval/gold']:.3f} | {r['eval/correct']:.2f} | {r['eval/kl']:.2f} (max "
                 f"{max_kl:.2f}) | {_num(r, 'eval/proxy')} | {r['eval/length']:.1f} | "
                 f"{r['eval/finished']:.2f} | {time_of(run)} |")
  lines += ["", "## By evaluation step", "", "| run | step | gold | correct | KL | proxy | length |",
            "|---|---|---|---|---|---|---|"]
  for name in ("ppo", "dpo", "hack"):
    for r in runs[name]["evals"]:
      lines.append(f"| {name} | {r['step']} | {r['eval/gold']:.3f} | {r['eval/correct']:.2f} | {r['eval/kl']:.2f} | "
                   f"{_num(r, 'eval/proxy')} | {r['eval/length']:.1f} |")
  lines += ["", "## Sampled answers to held-out prompts at the end (samples.txt of each run)", ""]
  for name, label in (("ppo", "PPO"), ("dpo", "DPO"), ("hack", "PPO, no KL penalty")):
    with open(os.path.join(runs[name]["workdir"], "samples.txt"), encoding="utf-8") as f:
      lines += [f"{label}:", "", *(f"    {line}" for line in f.read().splitlines()[:4]), ""]
  lines += ["![gold vs KL, reward hacking, preference accuracy](rlhf.png)", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


if __name__ == "__main__":
  main()
