"""The serving state: catalogue and session updates, durable before they are acknowledged.

``POST /items`` and ``POST /events`` change what the service answers without retraining. Each
accepted update is one JSON line in ``WORKDIR/serving/journal.jsonl`` (the run itself stays
read-only), written and fsynced before the change is applied and answered, and replayed in
order at start-up, so an update either survives a restart whole or was never acknowledged.
Each line carries the sha256 of its body: a torn last line (the process died mid-write, the
client never heard "ok") is cut off with a warning naming the file and line; a damaged line
anywhere else is an error naming them, never skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ecomjax.errors import CheckpointError, warn


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records = self._read()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open for appends)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # a file of whole records ends with a newline
        records = []
        for number, line in enumerate(complete, 1):
            record = self._parse(line, number)
            if record is None:
                if number == len(complete) and not tail:
                    return self._cut(records, data, number)
                raise CheckpointError(f"{self.path}:{number}: damaged serving-state record (bad JSON or sha256); "
                                      "the state after it cannot be trusted: restore the file or remove it")
            records.append(record)
        if tail:
            return self._cut(records, data, len(complete) + 1)
        return records

    def _parse(self, line: bytes, number: int) -> dict[str, Any] | None:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or record.get("sha256") != _digest(record.get("body")):
            return None
        if record.get("seq") != number:
            raise CheckpointError(f"{self.path}:{number}: record numbered {record.get('seq')!r}: lines were "
                                  "reordered or removed")
        return record

    def _cut(self, records: list, data: bytes, number: int) -> list[dict[str, Any]]:
        keep = sum(len(line) + 1 for line in data.split(b"\n")[:number - 1])
        warn(f"{self.path}:{number}: incomplete last record (the service stopped while writing it; it was "
             "never acknowledged): removed")
        with open(self.path, "r+b") as handle:
            handle.truncate(keep)
        return records

    def append(self, kind: str, body: Any) -> dict[str, Any]:
        """Write one record and fsync it; only then may the caller apply and acknowledge it."""
        with self._lock:
            record = {"seq": len(self.records) + 1, "kind": kind, "body": body, "sha256": _digest(body)}
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records.append(record)
            return record

    def close(self) -> None:
        self._file.close()
