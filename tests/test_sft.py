"""The SFT stage end to end on micro models: fine-tuning from a pretrained workdir (full and LoRA), the chat
CLI driven as a real process through a pseudo-terminal, with a tool call round trip, the HTTP server with one
too, and GRPO, the reward model, PPO and DPO from the fine-tuned run."""

import http.client
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
# One conversation the micro model learns by heart: a calculator call, its output, the answer.
CONVERSATION = [{"role": "user", "content": "add"},
                {"role": "assistant", "content": [{"type": "tool_call", "tool": "calculator", "input": "2+3"},
                                                  {"type": "tool_output", "output": "5"},
                                                  {"type": "text", "text": "5"}]}]


def _train(workdir, *overrides):
  out = subprocess.run([sys.executable, "-m", "llm_jax.train", "--config", MICRO, "--workdir", str(workdir),
                        *overrides], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pre")
  _train(workdir, "--config.train.steps=4", "--config.data.seq_len=64")
  return workdir


@pytest.fixture(scope="module")
def sft_workdir(pretrained, tmp_path_factory):
  """A micro model fine-tuned on one tool-call conversation until it says it back."""
  path = tmp_path_factory.mktemp("data") / "one.jsonl"
  path.write_text(json.dumps(CONVERSATION) + "\n")
  workdir = tmp_path_factory.mktemp("sft")
  _train(workdir, "--config.stage=sft", f"--config.init_from={pretrained}", f"--config.sft.mixture={path}:1",
         "--config.sft.examples=64", "--config.data.seq_len=64", "--config.data.val_fraction=0.5",
         "--config.train.steps=60", "--config.train.lr=0.02", "--config.train.warmup_steps=5",
         "--config.train.eval_every=60", "--config.train.checkpoint_every=60", "--config.train.log_every=10")
  return workdir


def test_sft_trains_only_assistant_tokens_and_learns(sft_workdir):
  metrics = [json.loads(line) for line in open(os.path.join(sft_workdir, "metrics.jsonl"), encoding="utf-8")]
  losses = [m["loss"] for m in metrics if "loss" in m]
  assert losses[-1] < 0.2 * losses[0]
  config = json.load(open(os.path.join(sft_workdir, "config.json"), encoding="utf-8"))
  assert config["stage"] == "sft"


def test_sft_with_lora_saves_adapters_only_and_loads_merged(pretrained, tmp_path):
  import llm_jax  # pylint: disable=import-outside-toplevel
  from llm_jax.model import lora  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "lora"
  out = _train(workdir, "--config.stage=sft", f"--config.init_from={pretrained}", "--config.lora.rank=4",
               "--config.lora.b_lr_ratio=4",  # LoRA+
               "--config.sft.mixture=arithmetic:1", "--config.sft.examples=64", "--config.sft.eval_problems=2",
               "--config.data.seq_len=64", "--config.train.steps=4", "--config.sft.max_new_tokens=16")
  assert "LoRA:" in out.stdout + out.stderr
  _, base, _ = llm_jax.load(str(pretrained))
  _, merged, _ = llm_jax.load(str(workdir))
  # The checkpoint holds far fewer numbers than the model, and loading merges them into a changed model.
  saved = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(workdir / "checkpoints" / "4" / "params")
              for f in fs)
  assert saved < 0.5 * 4 * lora.num_params(base)
  q_of = lambda params: params["layers"]["block_0"]["attn"]["q"]["kernel"]
  q_base, q_merged = q_of(base), q_of(merged)
  assert q_base.shape == q_merged.shape and abs(q_base - q_merged).max() > 0
  assert (base["final_norm"]["scale"] == merged["final_norm"]["scale"]).all()  # not adapted


def test_grpo_runs_rollouts_updates_and_evaluation_from_a_fine_tuned_run(sft_workdir, tmp_path):
  workdir = tmp_path / "grpo"
  args = ["--config.stage=grpo", f"--config.init_from={sft_workdir}", "--config.grpo.tasks=arithmetic",
          "--config.grpo.prompts=2", "--config.grpo.group=2", "--config.grpo.max_new_tokens=8",
          "--config.grpo.eval_problems=2", "--config.grpo.eval_samples=2", "--config.data.seq_len=64",
          "--config.model.max_seq_len=160",
          "--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
          "--config.grpo.dynamic_sampling=True", "--config.grpo.overlong_buffer=4"]
  _train(workdir, *args)
  metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8")]
  train = [m for m in metrics if "loss" in m]
  evals = [m for m in metrics if "eval/arithmetic/greedy" in m]
  assert [m["step"] for m in train] == [1, 2] and [m["step"] for m in evals] == [0, 2]
  for m in train:
    assert {"reward", "accuracy", "kl", "entropy", "clip_frac", "length", "groups_kept", "grad_norm"} <= set(m)
    # Dynamic sampling draws up to 3 rounds of 2 prompts x 2 answers to find groups with mixed outcomes; the
    # micro model rarely gets one right, and where no group is kept nothing trains.
    assert m["rollouts"] in (4, 8, 12) and (m["groups_kept"] == 1 or m["rollouts"] == 12)
    if m["groups_kept"] == 0:
      assert m["grad_norm"] == 0 and m["loss"] == 0
    else:
      assert m["kl"] >= -1e-6 and m["entropy"] > 0
  assert {"eval/arithmetic/pass@1", "eval/arithmetic/pass@2", "eval/arithmetic/length"} <= set(evals[-1])
  assert os.path.isdir(workdir / "checkpoints" / "2")
  again = _train(workdir, *args)
  assert "run complete" in again.stdout + again.stderr


def test_reward_model_ppo_and_dpo_run_from_a_fine_tuned_run(sft_workdir, tmp_path):
  """The three RLHF stages through the CLI: a reward model, PPO against it (its value model started from it),
  DPO; each logs its metrics and evaluations, checkpoints, and the PPO workdir loads as a language model."""
  import llm_jax  # pylint: disable=import-outside-toplevel
  common = [f"--config.init_from={sft_workdir}", "--config.data.seq_len=64", "--config.pref.train_pairs=48",
            "--config.pref.eval_pairs=6", "--config.pref.eval_prompts=4", "--config.pref.max_new_tokens=6",
            "--config.data.batch_size=4", "--config.train.eval_every=2", "--config.train.checkpoint_every=2"]
  rm = tmp_path / "rm"
  _train(rm, "--config.stage=reward", "--config.train.steps=4", *common)
  evals = [json.loads(line) for line in open(rm / "metrics.jsonl", encoding="utf-8") if "eval/accuracy" in line]
  assert [m["step"] for m in evals] == [0, 2, 4]
  assert {"eval/margin", "eval/reward_chosen", "eval/reward_rejected"} <= set(evals[-1])
  with pytest.raises(ValueError, match="holds a reward model"):
    llm_jax.load(str(rm))
  ppo = tmp_path / "ppo"
  args = ["--config.stage=ppo", f"--config.ppo.reward_model={rm}", "--config.train.steps=2", "--config.ppo.kl_target=1",
          *common]
  out = _train(ppo, *args)
  metrics = [json.loads(line) for line in open(ppo / "metrics.jsonl", encoding="utf-8")]
  train = [m for m in metrics if "loss" in m]
  assert [m["step"] for m in train] == [1, 2]
  assert {"score", "reward", "kl", "kl_coef", "entropy", "clip_frac", "vf_loss", "pg_loss", "gold", "length"} <= set(
      train[-1])
  assert train[1]["kl_coef"] != train[0]["kl_coef"]  # the adaptive controller moved it
  assert {"eval/gold", "eval/kl", "eval/proxy", "eval/correct"} <= set(metrics[-1])
  assert "value model from" in out.stdout + out.stderr
  _, params, _ = llm_jax.load(str(ppo))
  _, sft_params, _ = llm_jax.load(str(sft_workdir))
  assert jax_tree_structure(params) == jax_tree_structure(sft_params)
  assert "run complete" in (lambda o: o.stdout + o.stderr)(_train(ppo, *args))
  dpo = tmp_path / "dpo"
  _train(dpo, "--config.stage=dpo", "--config.train.steps=2", *common)
  evals = [json.loads(line) for line in open(dpo / "metrics.jsonl", encoding="utf-8") if "eval/gold" in line]
  assert [m["step"] for m in evals] == [0, 2]
  assert evals[0]["eval/kl"] == 0 and evals[0]["eval/accuracy"] == 0  # at the start the policy is the reference
  assert os.path.isdir(dpo / "checkpoints" / "2")


def jax_tree_structure(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_structure(tree)


def _read_until(fd, pattern: str, timeout: float) -> str:
  out, deadline = "", time.time() + timeout
  while pattern not in out:
    left = deadline - time.time()
    if left <= 0:
      raise AssertionError(f"timed out waiting for {pattern!r}; got:\n{out}")
    if select.select([fd], [], [], left)[0]:
      try:
        chunk = os.read(fd, 4096).decode("utf-8", "replace")
      except OSError:  # the child closed the terminal
        break
      out += chunk
  return out


def test_chat_cli_streams_runs_a_tool_and_takes_commands(sft_workdir):
  leader, follower = pty.openpty()
  proc = subprocess.Popen([sys.executable, "-m", "llm_jax.chat", "--workdir", str(sft_workdir),
                           "--max_new_tokens", "24"], stdin=follower, stdout=follower, stderr=follower,
                          env=ENV, cwd=ROOT)
  os.close(follower)
  try:
    _read_until(leader, "you> ", 120)
    os.write(leader, b"add\n")
    reply = _read_until(leader, "you> ", 120)
    # The model called the calculator, the host ran it, and the model read the result back.
    assert "[calculator: 2+3] -> 5" in reply, reply
    os.write(leader, b"/reset\n")
    assert "(conversation reset)" in _read_until(leader, "you> ", 30)
    os.write(leader, b"/exit\n")
    assert proc.wait(timeout=30) == 0
  finally:
    proc.kill()
    os.close(leader)


def test_serve_cli_answers_over_http_with_a_tool_call(sft_workdir):
  proc = subprocess.Popen([sys.executable, "-m", "llm_jax.serve", "--workdir", str(sft_workdir), "--port", "0",
                           "--max_new_tokens", "24", "--rows", "2"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
  try:
    banner = _read_until(proc.stdout.fileno(), "Ctrl-C stops", 120)
    url = banner.split(" on ")[1].split(" ")[0]
    host, port = url.removeprefix("http://").split(":")
    body = {"model": os.path.basename(str(sft_workdir)), "messages": [{"role": "user", "content": "add"}],
            "temperature": 0}
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    # The model called the calculator, the server ran it and fed the result back, the model answered.
    assert answer["choices"][0]["message"]["content"].startswith("[calculator: 2+3] -> 5"), answer
    assert answer["choices"][0]["finish_reason"] == "stop"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
  finally:
    proc.kill()
