"""progress.jsonl: the runner's event stream, one JSON object per line, appended and flushed per event.

The writer is the runner; readers (the node agent, tests, `bench/train.py`) tail the file with
`read_events`, which returns only complete lines and the offset to continue from, so a reader that
races the writer never sees half an event.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from argosy.core.clock import Clock, SystemClock

# Events after which a crash must not lose the line (state changes, not per-step metrics).
DURABLE = frozenset({"start", "checkpoint", "saving", "done", "error", "stopped"})


class ProgressLog:
    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or SystemClock()

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        # A diverged loss is NaN, which strict JSON cannot carry: it becomes null.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}
        event = {"type": type_, "ts": round(self.clock.now(), 3), **clean}
        line = json.dumps(event, separators=(",", ":"), allow_nan=False, default=str) + "\n"
        # Open per event: the file survives a disk that filled and was freed, and a reader that
        # rotated nothing sees plain appends (O_APPEND keeps each line whole).
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            if type_ in DURABLE:
                os.fsync(fh.fileno())
        return event

    def emit_or_print(self, type_: str, **fields: Any) -> None:
        """For the last word of a failing run: if even the event cannot be written (disk full), say it
        on stderr, which the agent captures."""
        try:
            self.emit(type_, **fields)
        except OSError:
            print(json.dumps({"type": type_, **fields}, default=str), file=sys.stderr, flush=True)


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete events after byte `offset`, and the offset after the last complete line."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return events, offset + end
