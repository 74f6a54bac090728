"""Fine-tuning datasets: streaming size-capped ingest, format detection, validation, stats, and
content-addressed storage under `ARGOSY_HOME/datasets/<sha256>.jsonl`.

Validation names the line and field that is wrong, because a user fixing a 10k-line file needs
to know where to look, not just that it is bad.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from argosy.core.errors import ArgosyError

FORMATS = ("chat", "instruction", "completion", "text")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# Histogram bucket upper bounds, in tokens (or whitespace words when no tokenizer is given).
HISTOGRAM_BOUNDS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
CHAT_ROLES = ("system", "user", "assistant", "tool")


class DatasetError(ArgosyError):
    """A dataset is malformed, too large, or unknown."""


@dataclass(frozen=True)
class DatasetStats:
    digest: str
    format: str
    rows: int
    bytes: int
    tokens: int
    tokens_counted_with: str
    histogram: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(line: int, fld: str | None, what: str, fix: str) -> DatasetError:
    where = f"line {line}" + (f", field '{fld}'" if fld else "")
    return DatasetError(f"dataset {where}: {what}", fix=fix)


def detect_format(row: Any, line: int) -> str:
    """The format a JSON row is written in; plain text lines are handled by the caller."""
    if not isinstance(row, dict):
        raise _fail(
            line, None, f"expected a JSON object, got {type(row).__name__}", "one JSON object per line"
        )
    if "messages" in row:
        return "chat"
    if "instruction" in row:
        return "instruction"
    if "prompt" in row or "completion" in row:
        return "completion"
    if "text" in row:
        return "text"
    raise _fail(
        line,
        None,
        f"no known fields (got {sorted(row)})",
        "use 'messages' (chat), 'instruction'/'input'/'output', 'prompt'/'completion', or 'text'",
    )


def _need_str(row: dict[str, Any], key: str, line: int, optional: bool = False) -> str:
    if key not in row:
        if optional:
            return ""
        raise _fail(line, key, "missing", f"add a string '{key}' to every row")
    value = row[key]
    if not isinstance(value, str):
        raise _fail(line, key, f"must be a string, got {type(value).__name__}", f"make '{key}' a string")
    return value


def row_text(fmt: str, row: dict[str, Any], line: int) -> str:
    """Validate one row of `fmt` and return its training text (what gets tokenized)."""
    if fmt == "chat":
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _fail(
                line, "messages", "must be a non-empty list", "give a list of {role, content} objects"
            )
        parts = []
        for i, m in enumerate(msgs):
            fld = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _fail(line, fld, "must be an object", 'use {"role": ..., "content": ...}')
            if m.get("role") not in CHAT_ROLES:
                raise _fail(
                    line, f"{fld}.role", f"unknown role {m.get('role')!r}", f"use one of {CHAT_ROLES}"
                )
            if not isinstance(m.get("content"), str):
                raise _fail(line, f"{fld}.content", "must be a string", "give each message a string content")
            parts.append(f"{m['role']}: {m['content']}")
        if not any(m["role"] == "assistant" for m in msgs):
            raise _fail(line, "messages", "has no assistant message", "add the reply the model should learn")
        return "\n".join(parts)
    if fmt == "instruction":
        instr = _need_str(row, "instruction", line)
        inp = _need_str(row, "input", line, optional=True)
        out = _need_str(row, "output", line)
        return f"{instr}\n{inp}\n{out}" if inp else f"{instr}\n{out}"
    if fmt == "completion":
        return _need_str(row, "prompt", line) + _need_str(row, "completion", line)
    return _need_str(row, "text", line)


def iter_parsed(lines: Iterable[str]) -> Iterable[tuple[int, str, Any]]:
    """Yield (line number, format, row) for each non-blank line; the first row fixes the format.

    A file whose first line is not JSON is plain text: one example per line, the row its text.
    JSON rows are validated objects of that format.
    """
    fmt: str | None = None
    for n, raw in enumerate(lines, start=1):
        s = raw.strip()
        if not s:
            continue
        if fmt is None:
            try:
                row = json.loads(s)
            except json.JSONDecodeError:
                fmt = "plain"
            else:
                fmt = detect_format(row, n)
        if fmt == "plain":
            yield n, "text", s
            continue
        try:
            row = json.loads(s)
        except json.JSONDecodeError as exc:
            raise _fail(
                n, None, f"not valid JSON ({exc.msg} at column {exc.colno})", "fix the JSON on that line"
            ) from exc
        if not isinstance(row, dict):
            raise _fail(n, None, "expected a JSON object", "one JSON object per line")
        yield n, fmt, row


def iter_rows(lines: Iterable[str]) -> Iterable[tuple[int, str, str]]:
    """Yield (line number, format, text) for each non-blank line (see iter_parsed)."""
    for n, fmt, row in iter_parsed(lines):
        yield n, fmt, row if isinstance(row, str) else row_text(fmt, row, n)


def validation_key(seed: int, line: int) -> float:
    """Where a line falls in [0, 1] for the deterministic train/validation split (seed and line number)."""
    return int(hashlib.sha256(f"{seed}:{line}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _bucket(n: int) -> str:
    for b in HISTOGRAM_BOUNDS:
        if n <= b:
            return f"<={b}"
    return f">{HISTOGRAM_BOUNDS[-1]}"


def analyse(
    path: Path, count_tokens: Callable[[str], int] | None = None, counted_with: str = "words"
) -> DatasetStats:
    """Validate a stored dataset file and compute its stats."""
    digest = path.stem
    rows = tokens = 0
    fmt = "text"
    hist: dict[str, int] = {}
    counter = count_tokens or (lambda t: len(t.split()))
    with path.open(encoding="utf-8") as fh:
        for _, row_fmt, text in iter_rows(fh):
            fmt = row_fmt
            rows += 1
            k = counter(text)
            tokens += k
            hist[_bucket(k)] = hist.get(_bucket(k), 0) + 1
    if rows == 0:
        raise DatasetError("dataset is empty", fix="give at least one example")
    return DatasetStats(
        digest, fmt, rows, path.stat().st_size, tokens, counted_with if count_tokens else "words", hist
    )


def dataset_dir(home: Path) -> Path:
    return home / "datasets"


def store_stream(
    chunks: Iterable[bytes], home: Path, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[str, Path, DatasetStats]:
    """Stream bytes into a temp file (never all in memory), hashing as we go; refuse past `max_bytes`;
    validate; then move into place under its sha256. A bad upload leaves nothing behind."""
    d = dataset_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=d, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise DatasetError(
                        f"dataset is larger than the {max_bytes} byte limit",
                        fix="split it, or raise the limit (max_bytes) on the server",
                    )
                h.update(chunk)
                out.write(chunk)
        digest = h.hexdigest()
        final = d / f"{digest}.jsonl"
        checked = tmp.with_name(f"{digest}.jsonl.part")
        tmp.rename(checked)
        tmp = checked
        stats = analyse(tmp)
        stats = DatasetStats(
            digest,
            stats.format,
            stats.rows,
            stats.bytes,
            stats.tokens,
            stats.tokens_counted_with,
            stats.histogram,
        )
        os.replace(tmp, final)
        return digest, final, stats
    finally:
        if tmp.exists():
            tmp.unlink()


def resolve(home: Path, ref: str) -> Path:
    """A dataset by digest (or a unique digest prefix of 8+ characters)."""
    d = dataset_dir(home)
    if len(ref) >= 8:
        hits = sorted(d.glob(f"{ref}*.jsonl")) if d.exists() else []
        if len(hits) == 1:
            return hits[0]
    raise DatasetError(f"no dataset {ref!r}", fix="upload it with `argosy train dataset upload FILE`")


def preview(path: Path, n: int = 5) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for _, _, text in iter_rows(fh):
            out.append(text)
            if len(out) >= n:
                break
    return out


def split(path: Path, validation_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split of example texts (a hash of seed and line, not random state)."""
    train: list[str] = []
    val: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for n, _, text in iter_rows(fh):
            (val if validation_key(seed, n) < validation_fraction else train).append(text)
    return train, val
