"""Dataset rows as training examples: which text the model sees, and which part of it it learns.

Pure (no tokenizer): a backend renders chat rows with its tokenizer's chat template and tokenizes
the segments. Loss goes only on the answer (the assistant turns, `output`, `completion`), so the
model learns to answer rather than to reproduce prompts; plain text is learnt in full.
Validation is datasets.py's, so a row is rejected here for exactly the reason upload rejects it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argosy.train.datasets import DatasetError, detect_format, row_text


@dataclass(frozen=True)
class Example:
    line: int
    format: str
    # (text, learn_it) pieces in order, for every format but chat.
    segments: tuple[tuple[str, bool], ...] = ()
    # Chat rows: the messages, rendered by the tokenizer's template in the backend.
    messages: tuple[dict[str, str], ...] = ()


def _example(fmt: str, row: dict[str, Any], line: int) -> Example:
    row_text(fmt, row, line)  # validates, raising DatasetError naming line and field
    if fmt == "chat":
        msgs = tuple({"role": m["role"], "content": m["content"]} for m in row["messages"])
        return Example(line, fmt, messages=msgs)
    if fmt == "instruction":
        prompt = row["instruction"] + "\n" + (row["input"] + "\n" if row.get("input") else "")
        return Example(line, fmt, segments=((prompt, False), (row["output"], True)))
    if fmt == "completion":
        return Example(line, fmt, segments=((row["prompt"], False), (row["completion"], True)))
    return Example(line, fmt, segments=((row["text"], True),))


def read_examples(path: Path) -> list[Example]:
    """Every example in a dataset file; the first row fixes the format (as in datasets.iter_rows)."""
    if not path.is_file():
        raise DatasetError(
            f"dataset {path} does not exist", fix="upload it with `argosy train dataset upload FILE`"
        )
    out: list[Example] = []
    fmt: str | None = None
    with path.open(encoding="utf-8") as fh:
        try:
            for n, raw in enumerate(fh, start=1):
                s = raw.strip()
                if not s:
                    continue
                if fmt is None:
                    try:
                        first = json.loads(s)
                    except json.JSONDecodeError:
                        fmt = "plain"
                    else:
                        fmt = detect_format(first, n)
                if fmt == "plain":
                    out.append(Example(n, "text", segments=((s, True),)))
                    continue
                try:
                    row = json.loads(s)
                except json.JSONDecodeError as exc:
                    raise DatasetError(
                        f"dataset line {n}: not valid JSON ({exc.msg} at column {exc.colno})",
                        fix="fix the JSON on that line",
                    ) from exc
                if not isinstance(row, dict):
                    raise DatasetError(
                        f"dataset line {n}: expected a JSON object", fix="one JSON object per line"
                    )
                out.append(_example(fmt, row, n))
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"dataset {path} is not UTF-8 text (byte {exc.start})", fix="save the file as UTF-8"
            ) from exc
    if not out:
        raise DatasetError(f"dataset {path} is empty", fix="give at least one example")
    return out


def is_validation(seed: int, line: int, fraction: float) -> bool:
    """The same deterministic key as datasets.split (a hash of seed and line number)."""
    key = int(hashlib.sha256(f"{seed}:{line}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return key < fraction


def split_examples(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if not is_validation(seed, e.line, fraction)]
    val = [e for e in examples if is_validation(seed, e.line, fraction)]
    if not train:  # a tiny dataset can hash entirely into validation: train on it all instead
        return examples, []
    return train, val
