"""The daemon's only local state: what Slurm cannot hold for us, in one SQLite file.

Everything else is rebuilt from the cluster after a restart (job names carry
``jarvice_<name>``, comments ``jarvice:<number>``). Three things are not:

* submit intents: sbatch was sent and its answer lost with the link; until a
  poll finds the job (or proves it absent) the name must stay reserved, or a
  restarted daemon could submit it a second time;
* outcomes: a job's end as this daemon saw it, until upstream collects it, for
  the cluster may purge the job and have no accounting to ask;
* answers: ``/exitstatus`` answers already given, so a repeated call after a
  restart says the same thing although the job's files are gone;
* clean-ups: jobs whose files (output, rc file, script, per-job tree) are to be
  removed from the scratch dir, until a removal succeeds.

Writes are small and synchronous (WAL, ``synchronous=NORMAL``: well under a
millisecond here), so they are made in line on the trio thread rather than paying
a thread hop for each.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS intents (name TEXT PRIMARY KEY, number INTEGER NOT NULL, interactive INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (jobid TEXT PRIMARY KEY, name TEXT NOT NULL, number INTEGER NOT NULL,
                                     record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cleanups (jobid TEXT PRIMARY KEY, since REAL NOT NULL);
"""


@dataclass(frozen=True)
class Intent:
    name: str
    number: int
    interactive: bool


@dataclass(frozen=True)
class Outcome:
    jobid: str
    name: str
    number: int
    record: dict


class Journal:
    def __init__(self, path: str = ":memory:") -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ intents
    def intend(self, name: str, number: int, interactive: bool) -> None:
        self._db.execute("INSERT OR REPLACE INTO intents VALUES (?, ?, ?)", (name, number, int(interactive)))

    def settle(self, name: str) -> None:
        self._db.execute("DELETE FROM intents WHERE name = ?", (name,))

    def intents(self) -> list[Intent]:
        rows = self._db.execute("SELECT name, number, interactive FROM intents ORDER BY name")
        return [Intent(name, number, bool(interactive)) for name, number, interactive in rows]

    # ------------------------------------------------------------ outcomes
    def finished(self, jobid: str, name: str, number: int, record: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?)", (jobid, name, number, json.dumps(record)))

    def collected(self, jobid: str) -> None:
        self._db.execute("DELETE FROM outcomes WHERE jobid = ?", (jobid,))

    def outcomes(self) -> list[Outcome]:
        rows = self._db.execute("SELECT jobid, name, number, record FROM outcomes ORDER BY jobid")
        return [Outcome(jobid, name, number, json.loads(record)) for jobid, name, number, record in rows]

    # ------------------------------------------------------------ answers
    def answered(self, key: str, answer: list, expires: float) -> None:
        """``expires`` is wall-clock time (seconds since the epoch): it must survive a restart."""
        self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, json.dumps(answer), expires))

    def answers(self, now: float) -> dict[str, tuple[list, float]]:
        self._db.execute("DELETE FROM answers WHERE expires < ?", (now,))
        rows = self._db.execute("SELECT key, answer, expires FROM answers")
        return {key: (json.loads(answer), expires) for key, answer, expires in rows}

    def expire(self, now: float) -> None:
        self._db.execute("DELETE FROM answers WHERE expires < ?", (now,))

    # ------------------------------------------------------------ clean-ups
    def to_clean(self, jobids: list[str], since: float) -> None:
        """``since``: wall-clock time the removal was first asked for (kept when asked again)."""
        self._db.executemany("INSERT OR IGNORE INTO cleanups VALUES (?, ?)", [(j, since) for j in jobids])

    def cleaned(self, jobids: list[str]) -> None:
        self._db.executemany("DELETE FROM cleanups WHERE jobid = ?", [(j,) for j in jobids])

    def cleanups(self) -> list[str]:
        return [jobid for (jobid,) in self._db.execute("SELECT jobid FROM cleanups ORDER BY since, jobid")]
