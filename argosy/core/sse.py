"""Reading server-sent events: the API's progress and sandbox output streams carry JSON `data:` lines."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """(event name, decoded JSON data) per `data:` line; the name is the last `event:` seen ("message")."""
    event = "message"
    for line in lines:
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])
