"""Dataset rows as training examples: which text the model sees, and which part of it it learns.

Pure (no tokenizer): a backend renders chat rows with its tokenizer's chat template and tokenizes
the segments. Loss goes only on the answer (the assistant turns, `output`, `completion`), so the
model learns to answer rather than to reproduce prompts; plain text is learnt in full.
Validation is datasets.py's, so a row is rejected here for exactly the reason upload rejects it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argosy.train.datasets import DatasetError, iter_parsed, row_text, validation_key


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
    """Every example in a dataset file; the first row fixes the format (datasets.iter_parsed)."""
    if not path.is_file():
        raise DatasetError(
            f"dataset {path} does not exist", fix="upload it with `argosy train dataset upload FILE`"
        )
    out: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        try:
            for n, fmt, row in iter_parsed(fh):
                if isinstance(row, str):  # plain text: one example per line, learnt in full
                    out.append(Example(n, "text", segments=((row, True),)))
                else:
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
    return validation_key(seed, line) < fraction


def split_examples(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if not is_validation(seed, e.line, fraction)]
    val = [e for e in examples if is_validation(seed, e.line, fraction)]
    if not train:  # a tiny dataset can hash entirely into validation: train on it all instead
        return examples, []
    return train, val
