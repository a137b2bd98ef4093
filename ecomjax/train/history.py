"""``history.jsonl``: one JSON line per optimizer step and per evaluation of every trained model.

Lines name their ``stage`` (``model``, ``bi_encoder``, ...). Process 0 writes; the file is
line-buffered, so it can be read (plotted, tailed) while training runs. On resume each stage's
lines after its checkpoint are dropped, since the resumed run writes them again; a last line cut
short by a killed process is dropped too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecomjax.errors import InputError


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every complete record of ``path`` (a partial last line, from a kill mid-write, is skipped;
    a malformed line before the last is an error naming it)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise InputError(f"{path}:{number}: not a JSON record: {line[:80]!r}") from None
    return records


class History:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.handle = None

    def start(self, stage: str, keep_until_step: int) -> None:
        """Rewrite the file keeping the other stages' lines and ``stage``'s up to its checkpoint."""
        if not self.enabled:
            return
        self.close()
        kept = [r for r in read_history(self.path)
                if r.get("stage") != stage or (keep_until_step > 0 and r["step"] <= keep_until_step)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.handle = self.path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record, default=float) + "\n")

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
