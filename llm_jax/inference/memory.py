"""Long-term memory for the chat: `remember` and `recall` tools over an SQLite file, so that what a user said in
one session is there in the next (`python -m llm_jax.chat --memory PATH`; default `<workdir>/memory.sqlite`).

    memory = Memory("runs/sft_tiny/memory.sqlite")   # created, with its folders, if missing
    memory.remember("my dog is called Rex")          # -> "remembered: my dog is called Rex"
    memory.recall("dog")                             # -> "1. my dog is called Rex"
    memory.notes()                                   # [Note(id=1, created='2026-05-01 10:02:03', text=...)]
    memory.forget(1); memory.clear()
    tools = {**tools_lib.TOOLS, **memory.tools()}    # what the chat's assistant runs

- One table, `notes(id, created, text)`: ids are never reused (so `/forget N` always means the note `/memory`
  showed as #N), `created` is SQLite's UTC `datetime('now')`. Every call opens its own connection and closes
  it, so several processes (two chats in turn, or at once: SQLite locks the file) and the assistant's tool
  threads share a file safely. A path that is no SQLite file, or one whose `notes` table has other columns,
  fails at once with a ValueError naming it.
- `recall` ranks every note with the BM25 `Retriever` of llm_jax/inference/tools.py (a chat's memory is
  small: it is indexed anew per call), newest first on equal scores, so a newer note ("my dog is called Max")
  comes before an older one it replaces. `recall_text` is that ranking on a list of notes; the synthetic
  `memory` task (llm_jax/data/tasks/memory.py) uses it, so its training tool outputs are what the tool returns.
- The tools follow tools.py: one string in, the text the model sees out. An empty or over-long note or query,
  or a database error, comes back as an "error: ..." text, never an exception. Notes are stored on one line
  (whitespace runs become one space); a note already stored (ignoring case) is not stored twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from typing import Callable, Iterator, Sequence

from llm_jax.inference.tools import Retriever

MAX_CHARS = 500  # per note and per query
NOTHING = "nothing remembered yet"
NO_MATCH = "no matching memory"
_COLUMNS = ["id", "created", "text"]
_SCHEMA = ("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT, "
           "created TEXT NOT NULL DEFAULT (datetime('now')), text TEXT NOT NULL)")


@dataclasses.dataclass(frozen=True)
class Note:
  id: int
  created: str  # UTC, "YYYY-MM-DD HH:MM:SS"
  text: str


def recall_text(notes: Sequence[str], query: str, k: int = 3) -> str:
  """What `recall` shows the model: the `k` notes of `notes` (oldest first) that best match `query` by BM25,
  numbered best first ("1. ...", one per line), newest first on equal scores; NOTHING when `notes` is empty,
  NO_MATCH when no note shares a word with the query."""
  if not notes:
    return NOTHING
  newest_first = list(reversed(notes))
  hits = Retriever(newest_first).search(query, k)
  return "\n".join(f"{rank}. {newest_first[i]}" for rank, (i, _) in enumerate(hits, 1)) if hits else NO_MATCH


def _one_line(text, what: str) -> tuple[str, str | None]:
  """(text on one line, None) or ("", the "error: ..." text the model sees)."""
  if not isinstance(text, str):
    return "", f"error: the {what} must be a string"
  text = " ".join(text.split())
  if not text:
    return "", f"error: empty {what}"
  if len(text) > MAX_CHARS:
    return "", f"error: {what} longer than {MAX_CHARS} characters"
  return text, None


class Memory:
  """Notes in the SQLite file `path`; see the module docstring."""

  def __init__(self, path):
    self.path = os.fspath(path)
    try:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      with self._connect() as db:
        db.execute(_SCHEMA)
        columns = [row[1] for row in db.execute("PRAGMA table_info(notes)")]
    except (OSError, sqlite3.Error) as e:  # e.g. "file is not a database", "unable to open database file"
      raise ValueError(f"{self.path}: cannot use this as an SQLite memory file ({e})") from None
    if columns != _COLUMNS:
      raise ValueError(f"{self.path}: its table 'notes' has columns {columns}, expected {_COLUMNS}: not a memory "
                       "file of llm_jax")

  @contextlib.contextmanager
  def _connect(self) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(self.path, timeout=10)  # waits up to 10 s for another process's write
    try:
      with db:  # one transaction: committed, or rolled back on an error
        yield db
    finally:
      db.close()

  # ------------------------------------------------------------------------------------------------------------------
  # the tools: text in, text out, never an exception

  def remember(self, text: str) -> str:
    """Stores `text` as a note; returns "remembered: <note>" (or "already remembered: <note>")."""
    note, error = _one_line(text, "note")
    if error:
      return error
    try:
      with self._connect() as db:
        if db.execute("SELECT 1 FROM notes WHERE lower(text) = lower(?)", (note,)).fetchone():
          return f"already remembered: {note}"
        db.execute("INSERT INTO notes (text) VALUES (?)", (note,))
    except sqlite3.Error as e:
      return f"error: could not store the note ({e})"
    return f"remembered: {note}"

  def recall(self, query: str, k: int = 3) -> str:
    """The `k` notes that best match `query` (recall_text)."""
    query, error = _one_line(query, "query")
    if error:
      return error
    try:
      with self._connect() as db:
        notes = [text for (text,) in db.execute("SELECT text FROM notes ORDER BY id")]
    except sqlite3.Error as e:
      return f"error: could not read the memory ({e})"
    return recall_text(notes, query, k)

  def tools(self) -> dict[str, Callable[[str], str]]:
    """The tools to add to an assistant's (tools.TOOLS format)."""
    return {"remember": self.remember, "recall": self.recall}

  # ------------------------------------------------------------------------------------------------------------------
  # for the host (the chat's /memory and /forget): ValueError naming the file on a database error

  def _write(self, sql: str, args: tuple = ()) -> int:
    try:
      with self._connect() as db:
        return db.execute(sql, args).rowcount
    except sqlite3.Error as e:
      raise ValueError(f"{self.path}: {e}") from None

  def notes(self) -> list[Note]:
    """Every note, oldest first."""
    try:
      with self._connect() as db:
        return [Note(*row) for row in db.execute("SELECT id, created, text FROM notes ORDER BY id")]
    except sqlite3.Error as e:
      raise ValueError(f"{self.path}: {e}") from None

  def forget(self, note_id: int) -> bool:
    """Deletes note `note_id`; False when there is no such note."""
    return self._write("DELETE FROM notes WHERE id = ?", (note_id,)) > 0

  def clear(self) -> int:
    """Deletes every note; returns how many there were."""
    return self._write("DELETE FROM notes")
