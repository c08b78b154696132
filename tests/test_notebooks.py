"""The notebooks run end to end on their tiny settings (LLM_JAX_NOTEBOOK_TINY=1), each in a fresh kernel of this
interpreter with its workdirs in tmp_path, and what they print and train is checked; the committed notebooks
carry no outputs."""

import glob
import json
import os
import re
import sys

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def _execute(name: str, tmp_path, monkeypatch):
  """Runs notebooks/<name> with tiny settings; returns (the executed notebook, the text of every output, the
  workdir root). The kernel is this interpreter's ipykernel, whatever kernels the machine has installed."""
  spec = tmp_path / "jupyter" / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before the user's and system kernels
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel's inline backend: plots become PNG outputs
  monkeypatch.setenv("LLM_JAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("LLM_JAX_NOTEBOOK_RUNS", str(tmp_path / "runs"))
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": ROOT}})
  try:
    client.execute()
  finally:
    nbformat.write(nb, str(tmp_path / name))  # the executed notebook, for a look after a failure
  texts = []
  for cell in nb.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream":
        texts.append(output.text)
      elif output.output_type in ("execute_result", "display_data"):
        texts += [output.data[k] for k in ("text/markdown", "text/plain") if k in output.data]
  return nb, "\n".join(texts), tmp_path / "runs" / "tiny"


def _metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8")]


def _images(nb) -> int:
  return sum("image/png" in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", []))


def test_committed_notebooks_have_no_outputs():
  assert [os.path.basename(p) for p in NOTEBOOKS] == ["01_pretrain.ipynb", "02_sft_chat_tools.ipynb",
                                                      "03_alignment_rl.ipynb"]
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None and "execution" not in cell.metadata, (
            f"{path}: cell {cell.id} was run; clear its outputs")
        too_long = [line for line in cell.source.splitlines() if len(line) > 120]
        assert not too_long, f"{path}: cell {cell.id} has lines over 120 characters: {too_long}"


def test_01_pretrain(tmp_path, monkeypatch):
  nb, text, runs = _execute("01_pretrain.ipynb", tmp_path, monkeypatch)
  bpb = [m["eval/bpb"] for m in _metrics(runs / "tiny") if "eval/bpb" in m]
  assert len(bpb) >= 3 and bpb[-1] < bpb[0], bpb
  assert "bytes per token" in text and "# pretrain report: tiny" in text and "--- temperature 0.8, 'import '" in text
  assert _images(nb) >= 2  # the bpb curve, and the report's loss plot


def test_02_sft_chat_tools(tmp_path, monkeypatch):
  _, text, runs = _execute("02_sft_chat_tools.ipynb", tmp_path, monkeypatch)
  sft = _metrics(runs / "sft_tiny")
  assert any("eval/loss" in m for m in sft) and any("eval/arithmetic/tools_on" in m for m in sft)
  assert "| arithmetic |" in text  # the tools on / off table
  # The chat turn: the model called the calculator and the host fed its output back.
  assert "model calls calculator with" in text and "host runs it and feeds back" in text, text
  assert re.search(r"as the chat CLI shows it: .*\[calculator: [^\]]*\] -> \S", text), text
  assert any("eval/loss" in m for m in _metrics(runs / "sft_tiny_lora")) and "LoRA" in text


def test_03_alignment_rl(tmp_path, monkeypatch):
  nb, text, runs = _execute("03_alignment_rl.ipynb", tmp_path, monkeypatch)
  card = (runs / "card.md").read_text(encoding="utf-8")
  for stage, metric in (("pretrain", "eval/bpb"), ("sft", "eval/loss"), ("sft", "eval/arithmetic/tools_on"), ("reward", "eval/accuracy"),
                        ("ppo", "eval/gold"), ("dpo", "eval/gold"), ("grpo", "eval/arithmetic/pass@1")):
    assert re.search(rf"^\| {stage} \| [^|]+ \| {re.escape(metric)} \| .* \| [✓✗] \|$", card, re.MULTILINE), card
  assert "# Report card" in text and _images(nb) >= 1
