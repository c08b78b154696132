"""One command through every stage on a CPU: data cleaning -> tokenizer -> pretraining -> SFT with tools ->
reward model -> PPO -> GRPO -> evaluation -> report card (issue #12).

    python experiments/speedrun_cpu.py [--out runs/speedrun] [--stages data,pretrain,...]

Stages, each in a directory of its own under --out, each the repository's own config for it:

  data         python -m llm_jax.data.prepare on the built-in corpus (CPython's docs and stdlib sources):
               cleaning rules and dedup -> out/data (shards, stats.json, report.md)
  pretrain     configs/tiny.py on out/data; trains its BPE tokenizer first (out/pretrain/tokenizer)
  sft          configs/sft_tiny.py from pretrain: tool use (calculator, sandboxed Python), held-out problems
               with tools on and off at the end
  sft_compare  configs/sft_compare.py from pretrain: the assistant of mixed answer quality that RLHF starts from
               (the gold judge of "which number is larger?" sees the difference; the tool assistant always
               answers alike)
  reward       configs/reward_tiny.py from sft_compare: reward model on gold-labelled preference pairs
  ppo          configs/ppo_tiny.py from sft_compare against the reward model, KL to the SFT model
  grpo         configs/grpo_tiny.py from sft: reasoning RL with verifiable rewards (held-out pass@k)
  report       every stage's report.md (llm_jax/eval/report.py), the tokenizer's compression on held-out text,
               and out/report.md: the time of every stage and the report card (stage x headline metric,
               before -> after, moved the right way or not)

Resumable stage by stage: a finished stage is found finished and skipped (prepare reuses its shards, a
training stage reports its workdir complete), a stage killed midway resumes from its last checkpoint. Each
stage's wall time goes into out/speedrun.json; a skipped stage keeps the time of the run that did it.
Measured on a 2-core CPU: experiments/speedrun_cpu.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import ROOT, config_lib  # common puts the repository on sys.path
from llm_jax import tokenizer as tokenizer_lib
from llm_jax import train as train_lib
from llm_jax.data import sources
from llm_jax.eval import report
from llm_jax.training import metrics as metrics_lib

# name -> (config file, {key: value, or a stage name in angle brackets for its workdir})
TRAINING = {
    "pretrain": ("tiny", {"data.source": "<data>"}),
    "sft": ("sft_tiny", {"init_from": "<pretrain>"}),
    "sft_compare": ("sft_compare", {"init_from": "<pretrain>"}),
    "reward": ("reward_tiny", {"init_from": "<sft_compare>"}),
    "ppo": ("ppo_tiny", {"init_from": "<sft_compare>", "ppo.reward_model": "<reward>"}),
    "grpo": ("grpo_tiny", {"init_from": "<sft>"}),
}
STAGES = ("data", *TRAINING, "report")


def _config(name: str, overrides: dict, out: str):
  c = config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"))
  workdir = lambda v: os.path.join(out, v.strip("<>")) if isinstance(v, str) and v.startswith("<") else v
  config_lib.override(c, {key: workdir(value) for key, value in overrides.items()})
  return config_lib.validate(c)


def data(out: str) -> dict:
  """Cleans the built-in corpus with configs/tiny.py's rules (a subprocess: prepare uses all cores)."""
  cmd = [sys.executable, "-m", "llm_jax.data.prepare", "--config", os.path.join(ROOT, "configs", "tiny.py"),
         "--out", os.path.join(out, "data")]
  subprocess.run(cmd, check=True, cwd=ROOT)
  with open(os.path.join(out, "data", "stats.json"), encoding="utf-8") as f:
    stats = json.load(f)
  return {"documents_in": stats["input"]["documents"], "documents_out": stats["output"]["documents"],
          "mb_in": round(stats["input"]["bytes"] / 1e6, 2), "mb_out": round(stats["output"]["bytes"] / 1e6, 2)}


def tokenizer_stats(out: str) -> dict:
  """Bytes per token of the pretraining run's tokenizer on its held-out documents (a byte tokenizer: 1.0)."""
  config = config_lib.load_file(os.path.join(ROOT, "configs", "tiny.py"))
  _, val = sources.split(sources.load_documents(os.path.join(out, "data")), config.data.val_fraction)
  tok = tokenizer_lib.load(os.path.join(out, "pretrain", "tokenizer"))
  texts = [d["text"] for d in val]
  tokens = sum(len(ids) for ids in tok.encode_batch(texts))
  return {"vocab_size": tok.vocab_size, "bytes_per_token": round(sum(len(t.encode()) for t in texts) / tokens, 3),
          "held_out_documents": len(val)}


def _speed(workdir: str) -> str:
  tps = [r["tokens_per_sec"] for r in metrics_lib.read(workdir) if "tokens_per_sec" in r]
  return f"{statistics.median(tps):,.0f} tok/s" if tps else ""


def write_report(out: str, times: dict, extra: dict) -> str:
  workdirs = [os.path.join(out, name) for name in TRAINING if os.path.isdir(os.path.join(out, name))]
  for workdir in workdirs:
    report.write(workdir, {"seconds": times.get(os.path.basename(workdir))})
  card = report.card(workdirs).split("\n", 2)[2]  # without its title
  total = sum(v for v in times.values() if v)
  lines = ["# CPU speedrun", "", f"`python experiments/speedrun_cpu.py --out {out}`: every stage of the "
           "lifecycle with the repository's tiny configs on the built-in corpus.", "",
           "| stage | time | throughput |", "|---|---|---|"]
  for name in STAGES[:-1]:
    seconds = times.get(name)
    speed = _speed(os.path.join(out, name)) if name in TRAINING and os.path.isdir(os.path.join(out, name)) else ""
    lines.append(f"| {name} | {f'{seconds / 60:.1f} min' if seconds else 'n/a'} | {speed} |")
  lines += [f"| **total** | **{total / 60:.1f} min** | |", ""]
  if "data" in extra:
    d = extra["data"]
    lines += [f"Data: {d['documents_in']:,} documents ({d['mb_in']} MB) in, {d['documents_out']:,} "
              f"({d['mb_out']} MB) after cleaning and dedup (out/data/report.md has the reasons).", ""]
  if "tokenizer" in extra:
    t = extra["tokenizer"]
    lines += [f"Tokenizer: {t['vocab_size']:,}-token BPE, {t['bytes_per_token']} bytes per token on the "
              f"{t['held_out_documents']} held-out documents (a byte-level tokenizer: 1.0).", ""]
  lines += ["## Report card", "", card]
  path = os.path.join(out, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "speedrun"))
  parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order: {','.join(STAGES)}")
  args = parser.parse_args()
  stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    parser.error(f"--stages: unknown {unknown}; stages are {','.join(STAGES)}")
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  state_path = os.path.join(out, "speedrun.json")
  state = {"times": {}, "extra": {}}
  if os.path.exists(state_path):
    with open(state_path, encoding="utf-8") as f:
      state = json.load(f)

  def save():
    with open(state_path, "w", encoding="utf-8") as f:
      json.dump(state, f, indent=1)

  for name in stages:
    t0 = time.time()
    print(f"== {name}", flush=True)
    if name == "data":
      done = os.path.exists(os.path.join(out, "data", "stats.json"))
      state["extra"]["data"] = data(out)
    elif name == "report":
      state["extra"]["tokenizer"] = tokenizer_stats(out)
      save()
      print(f"report: {write_report(out, state['times'], state['extra'])}", flush=True)
      continue
    else:
      config = _config(*TRAINING[name], out)
      config.train.progress = sys.stderr.isatty()
      done = bool(train_lib.STAGES[config.stage](config, os.path.join(out, name)).get("complete"))
    if not done or name not in state["times"]:
      state["times"][name] = round(time.time() - t0, 1)
    save()
    print(f"== {name}: " + ("already done" if done else f"{state['times'][name] / 60:.1f} min"), flush=True)


if __name__ == "__main__":
  main()
