"""Document cleaning (llm_jax/data/clean.py): for every drop reason, a document that must fail with exactly that
reason and a nearby one, just on the other side of the threshold, that must pass every check of the same rule.

Documents are built here: `prose(n)` is n words of English-like text (10-word sentences with stop words, one a
line, unique content words, so nothing repeats). Thresholds that are character shares are tested at the document's
own share, computed here from the rule's definition: the share itself keeps the document, a hair below drops it.
"""

from __future__ import annotations

import collections
import itertools
import json.decoder

import pytest

from llm_jax import config
from llm_jax.data import clean

CFG = config.base_config().clean.to_dict()
_SYL = ("ka", "lo", "mi", "ren", "dor", "sil", "tam", "vek", "pul", "nor", "bi", "zan", "fe", "gu", "hol", "jas")
_CONS = "bcdfghjklmnpqrstvwxz"


def _word(i: int) -> str:
  """The i-th (< 4096) of distinct 6..9-letter pseudo-words; none is a stop word."""
  return "".join(_SYL[(i >> s) & 15] for s in (0, 4, 8))


def _sentence(i: int, n: int = 10) -> str:
  w = [_word(7 * i + j) for j in range(7)]
  return " ".join(["The", w[0], w[1], w[2], "and", w[3], w[4], "of", w[5], w[6]][:n]) + "."


def prose(n: int, start: int = 0, per_line: int = 1) -> str:
  """n words: sentences start, start + 1, ... (each its own words), per_line sentences a line, no final newline."""
  sents = [_sentence(start + i, min(10, n - 10 * i)) for i in range(-(-n // 10))]
  return "\n".join(" ".join(sents[i:i + per_line]) for i in range(0, len(sents), per_line))


def _sized(lengths, stop=("the", "and")) -> str:
  """Stop words, then distinct consonant-led words (never stop words) of the given lengths."""
  return " ".join([*stop, *((_CONS[i % 20] + _CONS[i // 20 % 20] + "a" * 30)[:n] for i, n in enumerate(lengths))])


def _mark(text: str, k: int, fn) -> str:
  """fn applied to the first k plain content words of text (not stop words, not at a sentence's end)."""
  toks = text.split(" ")
  idx = [i for i, t in enumerate(toks) if t.isalpha() and t.lower() not in clean.STOP_WORDS][:k]
  assert len(idx) == k
  for i in idx:
    toks[i] = fn(toks[i])
  return " ".join(toks)


def _letters(text: str) -> int:
  return sum(map(len, text.split()))


_UNIQ = [prose(20, start=2 * i, per_line=2) for i in range(6)]  # six distinct one-line paragraphs
_THANKS = "Thanks for reading this."


def _oks(k: int, sep: str) -> str:
  """The six paragraphs, the first k followed by an "Ok." paragraph (sep "\n\n") or line (sep "\n")."""
  return "\n\n".join(u + sep + "Ok." if i < k else u for i, u in enumerate(_UNIQ))


def _gram_doc(n: int, k: int) -> tuple[str, str]:
  """(200 words of prose with one n-word phrase put inside each of the first k lines, the phrase)."""
  gram = " ".join(_word(3000 + j) for j in range(n))
  lines = [line.split(" ", 2) for line in prose(200).split("\n")]
  doc = "\n".join(" ".join([a, b, gram, rest] if i < k else [a, b, rest]) for i, (a, b, rest) in enumerate(lines))
  return doc, gram


def _case(reason, rule, keep, drop, **over):
  return pytest.param(rule, keep, over, drop, over, reason, id=reason)


def _edge(reason, rule, doc, key, share, index=None):
  """doc kept with cfg[key] (or its index-th entry) = share, the doc's own share, and dropped a hair below it."""
  def at(value):
    if index is None:
      return {key: value}
    return {key: tuple(value if i == index else v for i, v in enumerate(CFG[key]))}
  return pytest.param(rule, doc, at(share), doc, at(share * (1 - 1e-9)), reason, id=reason)


_DUP_PARA = "\n\n".join([_UNIQ[0], _THANKS, _UNIQ[1], _UNIQ[2], _THANKS])
_DUP_LINE = "\n\n".join([_UNIQ[0] + "\n" + _THANKS, _UNIQ[1] + "\n" + _THANKS, _UNIQ[2]])
_TOP = {n: _gram_doc(n, 4) for n in (2, 3, 4)}
_DUP = {n: _gram_doc(n, 2) for n in (5, 7, 10)}
_LINES10 = prose(100).split("\n")
_LINES25 = prose(250).split("\n")
_SHORT = [f"{'abcde ' * 4}{'y' * (n - 25)}." for n in (30, 31)]  # 5 words, 30 (short) or 31 characters
_THREE = "Extraordinarily comprehensive documentation."  # 3 words, 44 characters

CASES = [
    _case("gopher_too_few_words", clean.gopher_quality, prose(50), prose(49) + " - \u2014"),  # symbols do not count
    _case("gopher_too_many_words", clean.gopher_quality, prose(60), prose(61), max_words=60),
    _case("gopher_short_words", clean.gopher_quality, _sized([3] * 48), _sized([3] * 47 + [2])),  # mean 3.0 / 2.98
    _case("gopher_long_words", clean.gopher_quality, _sized([10] * 47 + [24]), _sized([10] * 47 + [25])),
    _case("gopher_hashes", clean.gopher_quality, _mark(prose(50), 5, "#".__add__), _mark(prose(50), 6, "#".__add__)),
    _case("gopher_ellipses", clean.gopher_quality, _mark(prose(50), 5, "...".__add__),
          _mark(_mark(prose(50), 3, "...".__add__), 3, "\u2026".__add__)),
    _case("gopher_bullet_lines", clean.gopher_quality,
          "\n".join(f" {clean.BULLETS[i % 7]} {ln}" if i < 9 else ln for i, ln in enumerate(_LINES10)),
          "\n".join(f"{clean.BULLETS[i % 7]} {ln}" for i, ln in enumerate(_LINES10))),
    _case("gopher_ellipsis_lines", clean.gopher_quality,
          "\n".join(ln[:-1] + "..." if i < 3 else ln for i, ln in enumerate(_LINES10)),
          "\n".join(ln[:-1] + ("..." if i else "\u2026 ") if i < 4 else ln for i, ln in enumerate(_LINES10))),
    _case("gopher_non_alpha_words", clean.gopher_quality, _mark(prose(50), 10, lambda _: "1999"),
          _mark(prose(50), 11, lambda _: "1999")),
    _case("gopher_stop_words", clean.gopher_quality, _sized([5] * 48, stop=("the", "And.")),
          _sized([5] * 49, stop=("the",))),
    _case("gopher_dup_paragraphs", clean.gopher_repetition, _oks(4, "\n\n"), _oks(5, "\n\n")),  # 3/10 and 4/11 dups
    _case("gopher_dup_lines", clean.gopher_repetition, _oks(4, "\n"), _oks(5, "\n")),
    _edge("gopher_dup_paragraph_chars", clean.gopher_repetition, _DUP_PARA, "dup_paragraph_char_frac",
          len(_THANKS) / len(_DUP_PARA)),
    _edge("gopher_dup_line_chars", clean.gopher_repetition, _DUP_LINE, "dup_line_char_frac",
          len(_THANKS) / len(_DUP_LINE)),
    *(_edge(f"gopher_top_{n}gram", clean.gopher_repetition, doc, "top_ngram_char_frac",
            4 * _letters(gram) / _letters(doc), n - 2) for n, (doc, gram) in _TOP.items()),
    *(_edge(f"gopher_dup_{n}grams", clean.gopher_repetition, doc, "dup_ngram_char_frac",
            _letters(gram) / _letters(doc), n - 5) for n, (doc, gram) in _DUP.items()),
    _case("c4_lorem_ipsum", clean.c4, prose(60) + "\nThe lorem of the ipsum is here.",
          prose(60) + "\nLorem ipsum dolor sit amet."),
    _case("c4_curly_brace", clean.c4, prose(60) + "\nThe set (1, 2] is small.}",
          prose(60) + "\nThe set {1, 2} is small."),
    _case("c4_no_lines_left", clean.c4, "Hi there you\n\nYes no ok\n", "Hi there\nOk\n\nYes no\n"),
    _case("fineweb_punct_lines", clean.fineweb, "\n".join(ln if i < 3 else ln[:-1] for i, ln in enumerate(_LINES25)),
          "\n".join(ln if i < 2 else ln[:-1] for i, ln in enumerate(_LINES25))),  # 3/25 = 0.12 and 2/25
    _case("fineweb_short_lines", clean.fineweb, "\n".join([_SHORT[0]] * 67 + [_SHORT[1]] * 33),
          "\n".join([_SHORT[0]] * 68 + [_SHORT[1]] * 32)),
    _case("fineweb_newlines_per_word", clean.fineweb, "\n".join([_THREE] * 10),
          "\n".join([_THREE] * 9 + ["Extraordinarily comprehensive."])),  # 9 newlines / 30 and 29 words
    _case("code_too_short", clean.code_quality, f"x = {'1' * 15}\n", f"x = {'1' * 14}\n"),  # 20 and 19 characters
    _case("code_too_long", clean.code_quality, "abc\n" * 25, "abc\n" * 25 + "d", code_max_chars=100),
    _case("code_long_line", clean.code_quality, "y = 2\n" * 20 + "x = " + "1" * 996 + "\n",
          "y = 2\n" * 20 + "x = " + "1" * 997 + "\n"),
    # 4 lines of 99 characters and their newlines: 400 characters over 4 lines (the final newline starts none)
    _case("code_mean_line_len", clean.code_quality, ("v = '" + "b" * 93 + "'\n") * 4,
          ("v = '" + "b" * 93 + "'\n") * 3 + "v = '" + "b" * 94 + "'\n"),
    _case("code_alnum", clean.code_quality, "x" * 25 + "+" * 74 + "\n", "x" * 24 + "_" + "+" * 74 + "\n"),
]


@pytest.mark.parametrize("rule,keep,keep_over,drop,drop_over,reason", CASES)
def test_rule_keeps_and_drops(rule, keep, keep_over, drop, drop_over, reason):
  assert rule(keep, {**CFG, **keep_over}) == (keep, "")
  assert rule(drop, {**CFG, **drop_over}) == (None, reason)


@pytest.mark.parametrize("marker", clean.AUTOGENERATED)
def test_code_autogenerated_marker_in_first_five_lines(marker):
  body = "x = 1\n" * 5
  assert clean.code_quality(f"# {marker.upper()}\n" + body, CFG) == (None, "code_autogenerated")
  assert clean.code_quality(body + f"# {marker}\n", CFG) == (body + f"# {marker}\n", "")


@pytest.mark.parametrize("line,over,removed", [
    ("Please enable JavaScript to see this map.", {}, True),
    ("This site uses cookies to improve your visit.", {}, True),
    ("Read our Privacy Policy before you sign up.", {}, True),
    ("Two words", {}, True),
    ("Three words here", {}, False),
    ("Please enable JavaScript to see this map.", {"c4_javascript": False}, False),
    ("Read our Privacy Policy before you sign up.", {"c4_policy": False}, False),
    ("Two words", {"c4_min_words_per_line": 0}, False),
    ("This line has no full stop", {}, False),
    ("This line has no full stop", {"c4_terminal_punct": True}, True),
    ("This line just trails off...", {"c4_terminal_punct": True}, True),
    ("Does this line ask a question?", {"c4_terminal_punct": True}, False),
    ("\u201cThis line is a quote.\u201d", {"c4_terminal_punct": True}, False),
])
def test_c4_removes_lines(line, over, removed):
  before, after = prose(30), prose(30, start=3)
  doc = f"{before}\n{line}\n\n{after}\n"
  assert clean.c4(doc, {**CFG, **over}) == ((f"{before}\n\n{after}\n", "c4_lines") if removed else (doc, ""))


def test_c4_removed_paragraph_leaves_one_blank_line():
  assert clean.c4(f"{prose(30)}\n\nTwo words\n\n{prose(30, start=3)}\n", CFG) == (
      f"{prose(30)}\n\n{prose(30, start=3)}\n", "c4_lines")


def test_fineweb_whitespace_only_is_empty():
  assert clean.fineweb(" \n\t\n", CFG) == (None, "empty")


@pytest.mark.parametrize("raw,want,code", [
    ("Cafe\u0301 and re\u0301sume\u0301", "Caf\u00e9 and r\u00e9sum\u00e9\n", False),  # NFC
    ("a\x00b\x07c\x1bd\x7fe\x85f\tg\nh", "abcdef\tg\nh\n", False),  # Cc removed, tab and newline kept
    ("one\r\ntwo\rthree\r\n", "one\ntwo\nthree\n", False),
    ("a\u00a0b\u2003c\u3000d\te", "a b c d\te\n", False),  # exotic spaces -> " ", tab kept
    ("zero\u200bwidth\ufeff \u200c\u2060marks", "zerowidth \u200cmarks\n", False),  # ZWNJ spells Persian words
    ("family \U0001f468\u200d\U0001f469\u200d\U0001f467", "family \U0001f468\u200d\U0001f469\u200d\U0001f467\n", False),
    ("trailing  \nspaces\t \n", "trailing\nspaces\n", False),
    ("\n\na\n\n\n\nb\n \n\t\n\nc\n\n\n", "a\n\nb\n\nc\n", False),  # blank-line runs -> one blank line
    ("Run this:\n    x = 1\n\tif x:\n", "Run this:\n    x = 1\n\tif x:\n", False),  # indentation kept
    ("\n\n  x = 1\n\n\n\ndef f():\n    return 1  \n\n\n", "  x = 1\n\n\n\ndef f():\n    return 1\n", True),
    ("a\r\nb\x00\u200bc\u0301", "a\nb\u0107\n", True),
    ("s = 'a\u00a0b'\n", "s = 'a\u00a0b'\n", True),  # code keeps every space inside its lines
    (" \n\t\r\n\u200b", "", False),
    (" \n\t\r\n\u200b", "", True),
])
def test_normalize(raw, want, code):
  out, reason = clean.normalize(raw, code=code)
  assert (out, reason) == (want, "normalize")
  assert clean.normalize(out, code=code)[0] == out  # idempotent


def test_clean_keeps_a_real_python_file():
  src = open(json.decoder.__file__, encoding="utf-8").read()
  repeats = collections.Counter(ln for ln in src.split("\n") if ln.strip())
  assert "{" in src and "#" in src and repeats.most_common(1)[0][1] > 2
  out, trace = clean.clean(src, "code", CFG)
  assert out == src
  assert [t[0] for t in trace] == ["normalize", "code_quality"]
  assert clean.clean(src, "text", CFG)[0] is None  # the prose rules would drop it


def test_curly_brace_drops_prose_but_not_code():
  doc = prose(100) + "\nThe map {1: 2} is small.\n"
  out, trace = clean.clean(doc, "text", CFG)
  assert out is None and (trace[-1][0], trace[-1][3]) == ("c4", "c4_curly_brace")
  assert clean.clean(doc, "code", CFG)[0] == doc
  assert clean.clean(doc, "text", {**CFG, "c4_curly_brace": False})[0] == doc


def test_trace_of_kept_and_dropped_documents():
  doc = prose(100, per_line=2)
  raw = doc.replace("\n", "  \r\n\r\n\r\n").replace(" and ", " and\u00a0") + "\r\n"
  out, trace = clean.clean(raw, "text", CFG)
  assert out == doc.replace("\n", "\n\n") + "\n"
  assert [t[0] for t in trace] == ["normalize", "gopher_quality", "gopher_repetition", "c4", "fineweb"]
  assert trace[0][1] == len(raw.encode()) > trace[0][2]  # CRs, trailing spaces and 2-byte NBSPs went
  assert all(b_out is not None for _, _, b_out, _ in trace) and [t[3] for t in trace[1:]] == [""] * 4
  assert all(a[2] == b[1] for a, b in itertools.pairwise(trace))
  assert trace[-1][2] == len(out.encode())

  out, trace = clean.clean(prose(100) + "\nLorem ipsum dolor sit amet.", "text", CFG)
  assert out is None and [t[0] for t in trace] == ["normalize", "gopher_quality", "gopher_repetition", "c4"]
  assert all(a[2] == b[1] for a, b in itertools.pairwise(trace))
  assert trace[-1][2:] == (None, "c4_lorem_ipsum")
  out, trace = clean.clean(prose(40), "text", CFG)
  assert out is None and trace[-1][0] == "gopher_quality" and trace[-1][2:] == (None, "gopher_too_few_words")
  assert clean.clean(prose(40), "text", {**CFG, "text_rules": ""}) == (prose(40) + "\n", [trace[0]])


@pytest.mark.parametrize("raw,kind,normalize", [
    ("", "text", True), (" \n\t\r\n\u200b\u00a0", "text", True), ("\n\n\n", "code", True), ("  \n ", "text", False),
])
def test_clean_drops_empty_documents(raw, kind, normalize):
  out, trace = clean.clean(raw, kind, {**CFG, "normalize": normalize})
  assert out is None and trace == [("normalize", len(raw.encode()), None, "empty")]


@pytest.mark.parametrize("rule,doc,key", [
    (clean.gopher_quality, _sized([5] * 50, stop=()), "min_stop_words"),
    (clean.gopher_quality, prose(20), "min_words"),
    (clean.gopher_repetition, _oks(6, "\n"), "dup_line_frac"),
    (clean.c4, prose(30) + "\nThe set {1} is small.", "c4_curly_brace"),
    (clean.fineweb, "\n".join(ln[:-1] for ln in _LINES25), "fineweb_min_punct_lines"),
    (clean.code_quality, "+" * 40 + "\n", "code_min_alnum"),
    (clean.code_quality, "# Do not edit\nx = 1\n", "code_autogenerated"),
])
def test_zero_turns_a_check_off(rule, doc, key):
  assert rule(doc, CFG)[0] is None
  assert rule(doc, {**CFG, key: type(CFG[key])(0)})[0] == doc


def test_rule_names():
  assert clean.rule_names(" c4, ,fineweb ") == ["c4", "fineweb"]
  assert clean.rule_names("") == []
  with pytest.raises(ValueError, match="nope"):
    clean.rule_names("gopher_quality,nope")


def test_config_validation():
  config.validate(config.base_config())
  c = config.base_config()
  c.clean.text_rules = "gopher_quality,nope"
  with pytest.raises(config.ConfigError, match=r"clean\.text_rules.*nope"):
    config.validate(c)
  c = config.base_config()
  c.clean.min_alpha_words = 1.5
  with pytest.raises(config.ConfigError, match=r"clean\.min_alpha_words"):
    config.validate(c)
