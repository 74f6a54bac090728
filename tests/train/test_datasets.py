import json
from pathlib import Path

import pytest

from argosy.train.datasets import DatasetError, preview, resolve, split, store_stream


def _lines(rows: list[object]) -> list[bytes]:
    return [(json.dumps(r) + "\n").encode() for r in rows]


@pytest.mark.parametrize(
    ("rows", "fmt"),
    [
        ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}], "chat"),
        ([{"instruction": "add", "input": "1 1", "output": "2"}], "instruction"),
        ([{"prompt": "a", "completion": "b"}], "completion"),
        ([{"text": "hello world"}], "text"),
    ],
)
def test_four_formats_stored_by_digest(tmp_path: Path, rows: list[object], fmt: str) -> None:
    digest, path, stats = store_stream(_lines(rows * 3), tmp_path)
    assert stats.format == fmt and stats.rows == 3 and path.name == f"{digest}.jsonl"
    assert resolve(tmp_path, digest[:10]) == path
    assert stats.tokens > 0 and sum(stats.histogram.values()) == 3


def test_plain_text_lines(tmp_path: Path) -> None:
    _, path, stats = store_stream([b"first line\nsecond line\n"], tmp_path)
    assert stats.rows == 2 and preview(path) == ["first line", "second line"]


def test_error_names_line_and_field(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": 3}]
    with pytest.raises(DatasetError, match=r"line 2, field 'completion'"):
        store_stream(_lines(rows), tmp_path)
    assert list((tmp_path / "datasets").iterdir()) == []


def test_chat_role_error(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "robot", "content": "x"}]}]
    with pytest.raises(DatasetError, match=r"line 1, field 'messages\[0\].role'"):
        store_stream(_lines(rows), tmp_path)


def test_size_cap(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="byte limit") as err:
        store_stream(_lines([{"text": "x" * 100}] * 10), tmp_path, max_bytes=200)
    assert err.value.fix
    assert list((tmp_path / "datasets").iterdir()) == []


def test_split_is_deterministic(tmp_path: Path) -> None:
    _, path, _ = store_stream(_lines([{"text": f"row {i}"} for i in range(100)]), tmp_path)
    a = split(path, 0.2, seed=1)
    assert a == split(path, 0.2, seed=1)
    assert len(a[0]) + len(a[1]) == 100 and 5 < len(a[1]) < 40
