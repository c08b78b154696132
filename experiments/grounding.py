"""Claims (issue #9): on people whose truth we control, "I don't know" training cuts the hallucination rate on
people the model never read by >= 50% (relative) while accuracy on people it did read drops <= 5 points;
retrieval (RAG) raises accuracy on unknown people by >= 30 points; self-consistency (majority of k samples,
the model's own likelihood ranking) and the fading of facts with their distance from the question, measured.

    python experiments/grounding.py [--out /tmp/llm_jax_experiments/grounding] [--people 250]

Stages, each in a directory under --out, finished ones reused:
  data      a world of fictional people (llm_jax/data/tasks/people.py; groups known_qa / known_probe /
            known_held read in pretraining, unknown_train / unknown_held never): paraphrased biographies of
            the known people as pretraining documents (8 to a document); the retrieval store (every person's
            biography, unknown people included, and RAG_STRANGERS strangers'); question-answer conversations
  pretrain  configs/tiny.py (600 steps) on the built-in corpus and the biographies (weights docs 1, code 1,
            people 4: two thirds of the tokens)
  sft_qa    the baseline: configs/sft_tiny.py's settings, 100 steps, questions about known_qa people answered
            ("Grew up in Tarsk.": the answer does not repeat the name, which would be copying it)
  probe     sft_qa asked every known_probe and unknown_train question 5 times at temperature 1: a fact is
            "known" when the majority answer is right
  sft_idk   sft_qa trained on (at IDK_LR, a third of its rate) the probed questions: answered where known, "I
            don't know." where not (Llama 3's recipe for factuality), plus sft_qa's data again at equal weight
            (so that answering stays the rule), 100 steps. Retrained from pretrain at sft_qa's rate instead, it
            refused more of the known people's questions (known -13.0 points, hallucination -64%, 2026-12-05)
  sft_idk_strangers  the same from sft_qa, with "I don't know." to every question about IDK_STRANGERS people
            outside the world as well (never read: more unfamiliar names to learn the refusal from)
  sft_rag   from pretrain: every question answered through the search tool (BM25 over the store, the top
            biography as the tool output), for known_qa and unknown_train people and 2,000 strangers
            (people.World.strangers, in the store too), 300 steps
  eval      greedy answers on known_held and unknown_held people: right / I don't know / wrong (a wrong answer
            about an unknown person is a hallucination; llm_jax/eval/hallucination.py); sft_rag with the search
            tool on and off (off: the model writes the tool's output itself); where sft_idk's refusals on
            known people fall (by person; on facts sft_qa knew)
  idk_vote  sft_idk and sft_idk_strangers, 8 answers at temperature 1 per held-out question: "I don't know"
            when at least m of them refuse (m = 1..8), else the majority of the others: the trade-off between
            the two targets
  consistency  sft_qa, 8 answers at temperature 1 per held-out question: one sample, the majority vote, the
            most likely answer by the model's own mean log-prob per token, greedy; abstaining when fewer than
            half the samples agree
  context   the pretrained model and sft_rag read an unknown person's fact, then `d` tokens of corpus text,
            then the fact's words up to its value ("<name> grew up in"): greedy accuracy of the value vs d, up
            to past the trained length (llm_jax/eval/needle.py fact_distance)

Writes experiments/grounding.{md,json,png}.
"""

import argparse
import collections
import json
import os
import random
import time

from common import ROOT, config_lib, pyplot, save_json  # common puts the repository on sys.path
from llm_jax import train as train_lib
from llm_jax.data.tasks import people
from llm_jax.eval import hallucination, needle
from llm_jax.inference import tools as tools_lib
from llm_jax.inference.assistant import Assistant
from llm_jax.inference.engine import Sampling

HERE = os.path.dirname(os.path.abspath(__file__))
PER_PERSON = 40  # paraphrased biographies of each known person in the pretraining data
BIOS_PER_DOC = 8
RAG_STRANGERS = 2000  # people outside the world, in the store, asked about in the retrieval traces
IDK_STRANGERS = 300  # other people outside the world, refused in sft_idk_strangers
IDK_LR = 3e-4  # sft_idk continues sft_qa (trained at configs/sft_tiny.py's 1e-3) at a third of its rate
PRETRAIN = {"train.steps": 600, "data.mixture": "docs:1,code:1,people:4"}
# QA data is small (900 conversations): few steps
SFT_STEPS = {"sft_qa": 100, "sft_idk": 100, "sft_idk_strangers": 100, "sft_rag": 300}
PROBE_SAMPLES, CONSISTENCY_SAMPLES = 5, 8
DISTANCES = (0, 16, 32, 64, 128, 192, 256, 320, 384, 448)
HOT = Sampling(temperature=1.0)
SEARCH_OUTPUT_TOKENS = 96  # the top biography, whole, as the tool output


def _jsonl(path: str, rows: list):
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return path


def _qa(world, group: str, answer=lambda person, attribute: "answer", retriever=None) -> list[list[dict]]:
  """Every question about the group's people in every phrasing, answered as `answer(person, attribute)` says."""
  rng = random.Random(f"qa/{group}")
  out = []
  for person, attribute in world.questions(world.group(group)):
    for phrasing in range(3):
      kind = answer(person, attribute)
      retrieved = retriever(person.name) if kind == "search" else None
      example = people.question(person, attribute, rng, kind, retrieved, phrasing=phrasing)
      out.append(example.conversation)
  return out


def _train(config_name: str, workdir: str, overrides: dict) -> float | None:
  """Trains (or finds finished) one stage; its training seconds, kept in the workdir for reruns."""
  config = config_lib.load_file(os.path.join(ROOT, "configs", f"{config_name}.py"))
  config.train.progress = False
  config_lib.override(config, overrides)
  t0 = time.time()
  summary = train_lib.STAGES[config.stage](config, workdir)
  kept = os.path.join(workdir, "grounding_seconds.json")
  if summary.get("complete"):  # finished earlier: its kept time (None from a run that kept none)
    if not os.path.exists(kept):
      return None
    with open(kept, encoding="utf-8") as f:
      return json.load(f)["seconds"]
  seconds = round(time.time() - t0, 1)
  save_json(kept, {"seconds": seconds})
  return seconds


def _sft(path, name: str, mixture: str, init_from: str = "pretrain", **overrides):
  """configs/sft_tiny.py's settings from `init_from`'s model on JSONL files (sft.mixture), SFT_STEPS[name] steps."""
  steps = SFT_STEPS[name]
  return _train("sft_tiny", path(name), {"init_from": path(init_from), "sft.mixture": mixture,
                                         "sft.examples": 12000, "train.steps": steps, "train.eval_every": steps,
                                         "train.checkpoint_every": steps, **overrides})


def _assistant(workdir: str, tools=None, **kwargs) -> Assistant:
  return Assistant.from_workdir(workdir, tools, **kwargs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/llm_jax_experiments/grounding")
  parser.add_argument("--people", type=int, default=250)
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run: 20 training steps per stage, results in --out instead of experiments/")
  args = parser.parse_args()
  if args.quick:
    PRETRAIN["train.steps"] = 20
    SFT_STEPS.update({k: 20 for k in SFT_STEPS})
    PRETRAIN["train.eval_every"] = PRETRAIN["train.checkpoint_every"] = 20
  out = os.path.abspath(args.out)
  path = lambda *names: os.path.join(out, *names)
  os.makedirs(path("data"), exist_ok=True)
  times, result = {}, {"people": args.people}

  world = people.World(args.people, seed=0)
  result["groups"] = {g: len(world.group(g)) for g in people.GROUPS}
  bios = world.biographies(PER_PERSON)
  docs = [{"text": "\n".join(d["text"] for d in bios[i:i + BIOS_PER_DOC])} for i in range(0, len(bios), BIOS_PER_DOC)]
  bios_path = _jsonl(path("data", "people.jsonl"), docs)
  strangers = world.strangers(RAG_STRANGERS)
  store = world.documents(also=strangers)
  _jsonl(path("data", "store.jsonl"), store)
  retriever = tools_lib.Retriever(store)
  search = {"search": lambda query: retriever(query, k=1, max_chars=1000)}
  qa_path = _jsonl(path("data", "qa.jsonl"), _qa(world, "known_qa"))

  times["pretrain"] = _train("tiny", path("pretrain"), {**PRETRAIN, "data.source": f"stdlib,{bios_path}"})
  times["sft_qa"] = _sft(path, "sft_qa", f"{qa_path}:1")

  # The probe: what does the baseline know about people it was not fine-tuned on?
  t0 = time.time()
  qa_model = _assistant(path("sft_qa"))
  probed = {}
  for group in ("known_probe", "unknown_train"):
    questions = world.questions(world.group(group))
    answers = hallucination.ask(qa_model, questions, samples=PROBE_SAMPLES, sampling=HOT, seed=1)
    known = hallucination.probe(questions, answers)
    probed[group] = {(p.name, a): k for (p, a), k in zip(questions, known)}
    result.setdefault("probe", {})[group] = sum(known) / len(known)
  times["probe"] = round(time.time() - t0, 1)
  print("probe", result["probe"], flush=True)
  idk_rows = _qa(world, "known_qa")
  for group in ("known_probe", "unknown_train"):
    idk_rows += _qa(world, group, lambda p, a, g=group: "answer" if probed[g][(p.name, a)] else "idk")
  idk_path = _jsonl(path("data", "qa_idk.jsonl"), idk_rows)
  rag_rows = []
  for group in ("known_qa", "unknown_train"):
    rag_rows += _qa(world, group, lambda p, a: "search", search["search"])
  rng = random.Random("qa/strangers")
  rag_rows += [people.question(p, a, rng, "search", search["search"](p.name)).conversation
               for p, a in world.questions(strangers)]
  rag_path = _jsonl(path("data", "qa_rag.jsonl"), rag_rows)

  # sft_qa's answers again at equal weight: answering stays the rule, "I don't know" the exception.
  times["sft_idk"] = _sft(path, "sft_idk", f"{idk_path}:1,{qa_path}:1", "sft_qa", **{"train.lr": IDK_LR})
  rng = random.Random("qa/idk_strangers")
  refused = _jsonl(path("data", "qa_idk_strangers.jsonl"),
                   [people.question(p, a, rng, "idk").conversation
                    for p, a in world.questions(world.strangers(IDK_STRANGERS, seed=1))])
  times["sft_idk_strangers"] = _sft(path, "sft_idk_strangers", f"{idk_path}:1,{qa_path}:1,{refused}:1", "sft_qa",
                                    **{"train.lr": IDK_LR})
  times["sft_rag"] = _sft(path, "sft_rag", f"{rag_path}:1")

  # Right / I don't know / wrong on held-out people, greedy.
  t0 = time.time()
  held = {g: world.questions(world.group(g)) for g in ("known_held", "unknown_held")}
  models = {"sft_qa": qa_model, "sft_idk": _assistant(path("sft_idk")),
            "sft_idk_strangers": _assistant(path("sft_idk_strangers")),
            "sft_rag, search on": _assistant(path("sft_rag"), search, max_output_tokens=SEARCH_OUTPUT_TOKENS),
            "sft_rag, search off": _assistant(path("sft_rag"))}
  result["eval"], graded = {}, {}
  for name, model in models.items():
    answers = {g: hallucination.ask(model, q, max_new_tokens=48) for g, q in held.items()}
    result["eval"][name] = {g: hallucination.rates(q, answers[g]) for g, q in held.items()}
    graded[name] = {g: [row[0] for row in hallucination.grades(q, answers[g])] for g, q in held.items()}
    print(name, json.dumps(result["eval"][name]), flush=True)
  result["abstention"] = _abstention(held["known_held"], graded["sft_qa"]["known_held"],
                                     graded["sft_idk"]["known_held"])
  times["eval"] = round(time.time() - t0, 1)

  # Abstaining by vote: the "I don't know" models sampled; a refusal only when at least m of the samples refuse.
  t0 = time.time()
  result["idk_vote"] = {}
  for name in ("sft_idk", "sft_idk_strangers"):
    samples = {g: hallucination.ask(models[name], q, samples=CONSISTENCY_SAMPLES, sampling=HOT, seed=2)
               for g, q in held.items()}
    result["idk_vote"][name] = {
        str(m): {g: _share([[_grade(v, p.value(a))] for (p, a), v in zip(q, _idk_vote(q, samples[g], m))])
                 for g, q in held.items()} for m in range(1, CONSISTENCY_SAMPLES + 1)}
  times["idk_vote"] = round(time.time() - t0, 1)

  # Self-consistency on the baseline.
  t0 = time.time()
  runner = _runner(path("sft_qa"))
  result["consistency"] = {}
  for group, questions in held.items():
    samples = hallucination.ask(qa_model, questions, samples=CONSISTENCY_SAMPLES, sampling=HOT, seed=2)
    greedy = hallucination.ask(qa_model, questions)
    votes = [hallucination.majority(texts, a) for (p, a), texts in zip(questions, samples)]
    ranked = hallucination.rank_by_likelihood(runner, questions, samples)
    truth = [p.value(a) for p, a in questions]
    abstain = [value if share >= 0.5 else "idk" for value, share in votes]
    result["consistency"][group] = {
        "greedy": _share(hallucination.grades(questions, greedy)),
        "one sample": _share(hallucination.grades(questions, samples)),
        "majority of 8": _share([[_grade(v, t)] for (v, _), t in zip(votes, truth)]),
        "most likely of 8": _share(hallucination.grades(questions, [[t] for t in ranked])),
        "majority, abstain below 1/2 agreement": _share([[_grade(v, t)] for v, t in zip(abstain, truth)]),
        "mean agreement": sum(s for _, s in votes) / len(votes)}
    print("consistency", group, json.dumps(result["consistency"][group]), flush=True)
  times["consistency"] = round(time.time() - t0, 1)

  # Distance in context.
  t0 = time.time()
  result["context"] = {name: _context(path(name), world) for name in ("pretrain", "sft_rag")}
  times["context"] = round(time.time() - t0, 1)
  result["times"] = times
  result["total_seconds"] = round(sum(t for t in times.values() if t is not None), 1)
  target = out if args.quick else HERE
  save_json(os.path.join(target, "grounding.json"), result)
  _write(result, target)


def _abstention(questions, qa_grades: list[str], idk_grades: list[str]) -> dict:
  """Where sft_idk says "I don't know" about people it read: how its refusals spread over people (how many
  of them get 0..5 refusals to their 5 questions) and how many refusals hit facts sft_qa answered right."""
  per_person = collections.Counter()
  for (person, _), grade in zip(questions, idk_grades):
    per_person[person.name] += grade == "idk"
  counts = list(per_person.values())
  return {"people": len(counts),
          "refusals_per_person": {str(k): counts.count(k) for k in range(len(people.ATTRIBUTES) + 1)},
          "refusals": idk_grades.count("idk"),
          "refusals_on_facts_sft_qa_knew": sum(q == "right" and i == "idk" for q, i in zip(qa_grades, idk_grades))}


def _abstention_line(a: dict) -> str:
  spread = ", ".join(f"{n} with {k}" for k, n in a["refusals_per_person"].items() if n)
  n = len(people.ATTRIBUTES)
  return (f"sft_idk refuses {a['refusals']} of the {n * a['people']} known_held questions (greedy). People by "
          f"how many of their {n} questions it refuses: {spread}. {a['refusals_on_facts_sft_qa_knew']} of the "
          "refusals are facts sft_qa answered right.")


def _idk_vote(questions, samples: list[list[str]], at_least: int) -> list[str]:
  """Per question, "idk" when at least `at_least` of the sampled answers refuse, else the majority value of
  the others."""
  out = []
  for (_, attribute), texts in zip(questions, samples):
    answered = [t for t in texts if hallucination.stated_value(t, attribute) != "idk"]
    refused = len(texts) - len(answered)
    out.append("idk" if refused >= at_least or not answered else hallucination.majority(answered, attribute)[0])
  return out


def _targets(rates: dict, base: dict) -> tuple[float, float]:
  """(change of known-people accuracy in points, relative drop of the hallucination rate on unknown people in
  %) of a model's rates against sft_qa's: the two targets of "I don't know" training."""
  return (100 * (rates["known_held"]["right"] - base["known_held"]["right"]),
          100 * (1 - rates["unknown_held"]["wrong"] / max(base["unknown_held"]["wrong"], 1e-9)))


def _grade(value: str, truth: str) -> str:
  return "right" if value == truth else "idk" if value == "idk" else "wrong"


def _share(grades: list[list[str]]) -> dict:
  flat = [g for row in grades for g in row]
  return {g: round(flat.count(g) / len(flat), 3) for g in hallucination.GRADES}


def _runner(workdir: str):
  from llm_jax.eval.benchmarks import Runner  # pylint: disable=import-outside-toplevel
  return Runner.from_workdir(workdir, prompt="chat", rows=32)


def _context(workdir: str, world) -> dict:
  """fact_distance on a workdir's model: where each unknown person grew up, stated `d` tokens before the
  question (validation text of the built-in corpus between them)."""
  import llm_jax  # pylint: disable=import-outside-toplevel
  config, params, tok = llm_jax.load(workdir)
  facts = needle.people_facts(world.group("unknown_held") + world.group("unknown_train"), ["city"])
  out = needle.fact_distance(config_lib.model_config(config), params, tok,
                             needle.haystack_texts("stdlib", config.data.val_fraction), facts, DISTANCES,
                             samples_per_distance=64)
  return {"trained_length": config.data.seq_len, **{str(d): v for d, v in out.items()}}


def _write(result: dict, target: str):
  ev = result["eval"]
  lines = ["# Grounding: knowing what you don't know, retrieval, self-consistency, fading context", "",
           f"`python experiments/grounding.py`: {result['people']} fictional people "
           f"({', '.join(f'{g} {n}' for g, n in result['groups'].items())}); the known ones' biographies are "
           "in pretraining, the unknown ones' never. Greedy answers to every question (5 attributes) about the "
           "held-out people; right / \"I don't know\" / wrong.", "",
           "| model | known_held right | known_held idk | known_held wrong | unknown_held right | unknown_held idk "
           "| unknown_held wrong (hallucination) |", "|---|---|---|---|---|---|---|"]
  for name, groups in ev.items():
    k, u = groups["known_held"], groups["unknown_held"]
    lines.append(f"| {name} | {k['right']:.3f} | {k['idk']:.3f} | {k['wrong']:.3f} | {u['right']:.3f} | "
                 f"{u['idk']:.3f} | {u['wrong']:.3f} |")
  base = ev["sft_qa"]

  def versus_base(name: str) -> str:  # the two targets of "I don't know" training
    known_change, drop = _targets(ev[name], base)
    return (f"hallucination on unknown people {base['unknown_held']['wrong']:.3f} -> "
            f"{ev[name]['unknown_held']['wrong']:.3f} ({drop:.0f}% lower; target >= 50%), accuracy on known people "
            f"{base['known_held']['right']:.3f} -> {ev[name]['known_held']['right']:.3f} ({known_change:+.1f} points; "
            "target >= -5).")

  rag_gain = ev["sft_rag, search on"]["unknown_held"]["right"] - ev["sft_rag, search off"]["unknown_held"]["right"]
  lines += ["", "- \"I don't know\" training (sft_idk): " + versus_base("sft_idk"),
            f"- With {IDK_STRANGERS} strangers refused too (sft_idk_strangers): " + versus_base("sft_idk_strangers"),
            f"- Retrieval: accuracy on unknown people {ev['sft_rag, search off']['unknown_held']['right']:.3f} "
            f"(search off) -> {ev['sft_rag, search on']['unknown_held']['right']:.3f} (on): {100 * rag_gain:+.1f} "
            "points (target >= +30).",
            f"- Probe of sft_qa (majority of {PROBE_SAMPLES} samples at temperature 1 right): known_probe "
            f"{result['probe']['known_probe']:.3f}, unknown_train {result['probe']['unknown_train']:.3f} of facts "
            "known.",
            "", "## Where sft_idk refuses, and abstaining by vote", "",
            _abstention_line(result["abstention"]), "",
            f"{CONSISTENCY_SAMPLES} answers at temperature 1 per question: \"I don't know\" when at least m of them "
            "refuse, else the majority of the others (m = 1 refuses most). Against sft_qa greedy:", "",
            "| model | m | known_held right / idk / wrong | unknown_held right / idk / wrong | known change (points) | "
            "hallucination drop |", "|---|---|---|---|---|---|"]
  for name, votes in result["idk_vote"].items():
    for m, groups in votes.items():
      k, u = groups["known_held"], groups["unknown_held"]
      known_change, drop = _targets(groups, base)
      lines.append(f"| {name} | {m} | {k['right']:.3f} / {k['idk']:.3f} / {k['wrong']:.3f} | {u['right']:.3f} / "
                   f"{u['idk']:.3f} / {u['wrong']:.3f} | {known_change:+.1f} | {drop:.0f}% |")
  lines += ["", "## Self-consistency (sft_qa, 8 samples at temperature 1)", "",
            "| group | method | right | idk | wrong |", "|---|---|---|---|---|"]
  for group, rows in result["consistency"].items():
    for method, r in rows.items():
      if method != "mean agreement":
        lines.append(f"| {group} | {method} | {r['right']:.3f} | {r['idk']:.3f} | {r['wrong']:.3f} |")
    lines.append(f"| {group} | mean agreement with the majority | {rows['mean agreement']:.3f} | | |")
  ctx = result["context"]
  lines += ["", f"## A fact's distance from the question (trained length {ctx['pretrain']['trained_length']})", "",
            "| tokens between fact and question | row length (tokens) | "
            + " | ".join(f"{m} accuracy | {m} answer log-prob" for m in ctx) + " |",
            "|---|---|" + "---|---|" * len(ctx)]
  for d in DISTANCES:
    lines.append(f"| {d} | {ctx['pretrain'][str(d)]['length']} | "
                 + " | ".join(f"{c[str(d)]['accuracy']:.3f} | {c[str(d)]['answer_logprob']:.2f}" for c in ctx.values())
                 + " |")
  t = result["times"]
  lines += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in t.items())
            + f"; total {result['total_seconds'] / 60:.1f} min.", ""]
  with open(os.path.join(target, "grounding.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  plt = pyplot()
  if plt is None:
    return
  fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
  names = list(ev)
  for i, group in enumerate(("known_held", "unknown_held")):
    bottom = [0.0] * len(names)
    for grade, color in zip(hallucination.GRADES, ("tab:green", "tab:gray", "tab:red")):
      values = [ev[n][group][grade] for n in names]
      a.bar([j * 3 + i for j in range(len(names))], values, bottom=bottom, color=color,
            label=grade if i == 0 else None)
      bottom = [x + y for x, y in zip(bottom, values)]
  a.set_xticks([j * 3 + 0.5 for j in range(len(names))], [f"{n}\n(known | unknown)" for n in names], fontsize=7)
  a.set_ylabel("share of answers")
  a.legend()
  for name, c in ctx.items():
    b.plot(DISTANCES, [c[str(d)]["accuracy"] for d in DISTANCES], marker="o", label=name)
  b.axvline(ctx["pretrain"]["trained_length"], color="gray", linestyle="--", label="trained length")
  b.set_xlabel("tokens between the fact and the question")
  b.set_ylabel("accuracy")
  b.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(target, "grounding.png"), dpi=100)


if __name__ == "__main__":
  main()
