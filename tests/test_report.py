"""llm_jax/eval/report.py on hand-written workdirs (no training): tables, plots, the no-matplotlib path, the card,
the CLI; train.write_report turning a failure into a warning."""

import builtins
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest

from llm_jax import config as config_lib
from llm_jax.eval import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def make_workdir(path, stage, records, config=None):
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"stage": stage, **(config or {})}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return str(path)


def pretrain_records():
  evals0 = {"eval/loss": 5.9, "eval/bpb": 3.28, "eval/tokens": 2720.0, "eval/order0_bpb": 4.4}
  train = [{"step": s, "loss": 6.0 - s, "grad_norm": 2.0 / s, "lr": 1e-4 * s} for s in range(1, 5)]
  for s, record in enumerate(train[1:], start=2):
    record.update(tokens_per_sec=1000.0 * s, mfu=0.01 * s)
  return ([{"step": 0, **evals0}] + train
          + [{"step": 4, "eval/loss": 2.5, "eval/bpb": 1.75, "eval/tokens": 2720.0, "eval/order0_bpb": 4.4}])


def sft_records():
  return [{"step": 0, "eval/loss": 2.0, "eval/bpb": 1.4}, {"step": 2, "loss": 1.8, "lr": 1e-4},
          {"step": 4, "loss": 1.2, "lr": 5e-5}, {"step": 4, "eval/loss": 1.5, "eval/bpb": 1.0},
          {"step": 4, "eval/arithmetic/tools_on": 0.6, "eval/arithmetic/tools_off": 0.3,
           "eval/arithmetic/exact_call": 0.9, "eval/compare/tools_on": 0.2, "eval/compare/tools_off": 0.2}]


def reward_records():  # held-out accuracy got worse
  return [{"step": 0, "eval/accuracy": 0.5, "eval/margin": 0.0},
          {"step": 2, "loss": 0.6, "accuracy": 0.7, "margin": 0.3, "lr": 1e-4},
          {"step": 2, "eval/accuracy": 0.4, "eval/margin": -0.1}]


def grpo_records():
  def evals(step, greedy, pass1):
    return {"step": step, "eval/arithmetic/greedy": greedy, "eval/arithmetic/pass@1": pass1,
            "eval/arithmetic/pass@2": pass1 + 0.1, "eval/arithmetic/length": 24.0 + step}
  train = [{"step": s, "loss": 0.1 / s, "kl": 0.01 * s, "reward": 0.5 + 0.1 * s, "accuracy": 0.5 + 0.1 * s,
            "lr": 1e-5, "step_s": 2.0 + s, "rollout_s": 1.0 + s} for s in (1, 2)]
  return [evals(0, 0.74, 0.59)] + train + [evals(2, 0.84, 0.71)]


def parse_tables(text):
  """{section title: {metric: (first, first_step, last, last_step, points)}} of report.md."""
  tables, section = {}, None
  for line in text.splitlines():
    if line.startswith("## "):
      section = tables.setdefault(line[3:], {})
    elif line.startswith("| ") and not line.startswith("| metric"):
      key, first, last, _, points = [c.strip() for c in line.strip("|").split("|")]
      (v0, s0), (v1, s1) = first.split(), last.split()
      section[key] = (float(v0), int(s0.strip("()")), float(v1), int(s1.strip("()")), int(points))
  return tables


def test_report_tables_header_and_determinism(tmp_path):
  config = json.loads(config_lib.to_json(config_lib.base_config()))
  workdir = make_workdir(tmp_path / "pre", "pretrain", pretrain_records(), config)
  path = report.write(workdir, {"step": 4, "seconds": 12.34})
  assert path == os.path.join(workdir, "report.md")
  text = open(path, encoding="utf-8").read()
  tables = parse_tables(text)
  assert tables["Training"] == {"loss": (5.0, 1, 2.0, 4, 4), "grad_norm": (2.0, 1, 0.5, 4, 4),
                                "lr": (1e-4, 1, 4e-4, 4, 4)}  # no throughput rows
  assert tables["Evaluation"]["eval/bpb"] == (3.28, 0, 1.75, 4, 2)
  assert tables["Evaluation"]["eval/loss"] == (5.9, 0, 2.5, 4, 2)
  assert list(tables["Evaluation"]) == ["eval/loss", "eval/bpb", "eval/tokens", "eval/order0_bpb"]
  n_params = config_lib.model_config(config).num_params()
  assert "- stage: pretrain" in text and "- init_from: none" in text and "- steps: 4" in text
  assert f"- model: {n_params:,} parameters" in text and "- wall time: 12.3 s" in text
  assert f"{statistics.median([2000.0, 3000.0, 4000.0]):.4g} tokens/s" in text and "MFU 3.00%" in text
  # Without the summary (a re-render) nothing else changes, and the markdown is stable.
  again = open(report.write(workdir), encoding="utf-8").read()
  assert again == open(report.write(workdir), encoding="utf-8").read()
  assert again.replace("- wall time: n/a (only the run itself knows it)", "- wall time: 12.3 s") == text


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is a dev extra")
def test_plots_are_pngs_linked_relatively(tmp_path):
  workdir = make_workdir(tmp_path / "grpo", "grpo", grpo_records(), {"init_from": "runs/sft"})
  text = open(report.write(workdir), encoding="utf-8").read()
  for name in ("loss.png", "eval.png"):
    with open(os.path.join(workdir, "report", name), "rb") as f:
      assert f.read(8) == PNG_MAGIC
    assert f"](report/{name})" in text
  assert "- init_from: runs/sft" in text and "s/step" in text
  assert "step_s" not in parse_tables(text)["Training"]
  # A pretrain run whose eval/tokens never changes: that series is named as table-only, not plotted.
  pre = make_workdir(tmp_path / "pre", "pretrain", pretrain_records())
  text = open(report.write(pre), encoding="utf-8").read()
  assert "In the table only (fewer than 2 points, or one value throughout): eval/tokens, eval/order0_bpb" in text


def test_without_matplotlib_report_says_so_and_drops_stale_plots(tmp_path, monkeypatch):
  workdir = make_workdir(tmp_path / "sft", "sft", sft_records())
  os.makedirs(os.path.join(workdir, "report"))
  stale = os.path.join(workdir, "report", "loss.png")
  open(stale, "wb").close()
  real_import = builtins.__import__

  def no_matplotlib(name, *args, **kwargs):
    if name.split(".")[0] == "matplotlib":
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, "__import__", no_matplotlib)
  text = open(report.write(workdir), encoding="utf-8").read()
  assert "Plots: none, matplotlib is not installed (pip install -e '.[dev]')." in text
  assert ".png" not in text and not os.path.exists(stale)
  assert parse_tables(text)["Evaluation"]["eval/arithmetic/tools_on"] == (0.6, 4, 0.6, 4, 1)


def card_rows(text):
  rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
  return [[c.strip() for c in row.strip("|").split("|")] for row in rows]


def test_card_in_stage_order_with_verdicts_and_na(tmp_path):
  assert set(report.HEADLINES) == set(config_lib.STAGES)
  dirs = {"grpo": make_workdir(tmp_path / "g", "grpo", grpo_records()),
          "ppo": make_workdir(tmp_path / "p", "ppo", [{"step": 1, "loss": 0.3, "score": 0.1, "gold": 0.2}]),
          "reward": make_workdir(tmp_path / "r", "reward", reward_records()),
          "sft": make_workdir(tmp_path / "s", "sft", sft_records()),
          "pretrain": make_workdir(tmp_path / "pre", "pretrain", pretrain_records())}
  out = tmp_path / "card.md"
  text = report.card(list(dirs.values()), str(out))
  assert out.read_text(encoding="utf-8") == text
  rows = {(stage, metric): (workdir, better, before, after, verdict)
          for stage, workdir, metric, better, before, after, verdict in card_rows(text)}
  assert [stage for stage, *_ in card_rows(text)] == ["pretrain"] * 2 + ["sft"] * 2 + ["reward"] * 2 + ["ppo"] * 2 \
      + ["grpo"] * 2
  assert rows["pretrain", "eval/bpb"] == (dirs["pretrain"], "lower", "3.28 (0)", "1.75 (4)", "✓")
  assert rows["reward", "eval/accuracy"] == (dirs["reward"], "higher", "0.5 (0)", "0.4 (2)", "✗")
  assert rows["reward", "eval/margin"][-1] == "✗" and rows["sft", "eval/loss"][-1] == "✓"
  assert rows["sft", "eval/arithmetic/tools_on"][2:] == ("0.3 (tools_off)", "0.6 (4)", "✓")  # against tools off
  assert ("sft", "eval/compare/tools_on") not in rows  # a task without a tool call: tools cannot help it
  assert rows["ppo", "eval/gold"][2:] == rows["ppo", "eval/proxy"][2:] == ("n/a", "n/a", "n/a")
  assert rows["grpo", "eval/arithmetic/pass@1"][2:] == ("0.59 (0)", "0.71 (2)", "✓")
  assert rows["grpo", "eval/arithmetic/greedy"][-1] == "✓"


def run_cli(*args):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "llm_jax.eval.report", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_writes_reports_and_card_and_names_a_non_workdir(tmp_path):
  pre = make_workdir(tmp_path / "pre", "pretrain", pretrain_records())
  sft = make_workdir(tmp_path / "sft", "sft", sft_records())
  proc = run_cli(sft, pre, "--card", tmp_path / "card.md")
  assert proc.returncode == 0, proc.stderr
  paths = [os.path.join(sft, "report.md"), os.path.join(pre, "report.md"), str(tmp_path / "card.md")]
  assert proc.stdout.split() == paths and all(os.path.exists(p) for p in paths)
  assert [row[0] for row in card_rows((tmp_path / "card.md").read_text(encoding="utf-8"))][:3] == [
      "pretrain", "pretrain", "sft"]
  (tmp_path / "empty").mkdir()
  os.remove(os.path.join(pre, "report.md"))
  proc = run_cli(pre, tmp_path / "empty")
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: {tmp_path / 'empty'} is not a workdir (no config.json or metrics.jsonl)"
  assert not os.path.exists(os.path.join(pre, "report.md"))  # every workdir is checked before any is written


def test_train_logs_a_report_failure_as_a_warning(tmp_path, monkeypatch, caplog):
  from llm_jax import train  # pylint: disable=import-outside-toplevel

  def broken(workdir, summary):
    raise OSError(f"no space left for {workdir}")
  monkeypatch.setattr(train.report, "write", broken)
  train.write_report(str(tmp_path), {"step": 3})  # returns: the finished run is not failed
  assert any(r.levelname == "WARNING" and f"OSError: no space left for {tmp_path}" in r.getMessage()
             for r in caplog.records)
