"""Moving a training job's inputs to a node and its output back, for nodes that do not share the
server's filesystem (a cloud VM, a machine enrolled by hand).

Everything travels as a byte stream with a sha256 known before the first byte: a dataset is a file
already named by its digest; a directory (a base model, the job's output) is a *deterministic* tar
(sorted members, zeroed mtime/owner), so hashing it once and streaming it again give the same bytes,
and the digest doubles as the node's cache key. The receiver spools, checks size and digest, and
only then unpacks (regular files and directories only, nothing outside the target) and moves the
result into place with renames. A truncated or corrupt transfer leaves nothing behind.

Server side: `model_digest` (memoised by a stat signature, so a big model is hashed once),
`accept_output`, `read_receipt`. Node side: `tar_stream`, `stream_digest`, `unpack`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from argosy.core.errors import ArgosyError, AuthError

CHUNK = 1 << 20
BLOCK = 512
# What a node's upload may contain at its top level (the runner's output dir and its records).
OUTPUT_MEMBERS = ("output", "emissions.json", "progress.jsonl")
RECEIPT = "upload.json"
DEFAULT_MAX_OUTPUT_BYTES = 64 << 30  # a merged 30B model in bf16 fits; raise it on the server if not


class ForbiddenError(AuthError):
    http_status = 403


class TooLargeError(ArgosyError):
    http_status = 413


class TransferError(ArgosyError):
    """A transfer that arrived wrong (truncated, corrupt, unsafe): nothing was kept."""


# -- deterministic tar ----------------------------------------------------------------------------
def tree_members(root: Path, prefix: str = "") -> list[tuple[str, Path]]:
    """(name in the archive, path) for every directory and file under `root`, sorted. Symlinked files
    (a Hugging Face cache snapshot is made of them) travel as the files they point to."""
    out: list[tuple[str, Path]] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        name = f"{prefix}/{rel}" if prefix else rel
        if (p.is_dir() and not p.is_symlink()) or p.is_file():
            out.append((name, p))
    return out


def _header(name: str, size: int, is_dir: bool) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    ti.size = 0 if is_dir else size
    ti.mode = 0o755 if is_dir else 0o644
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_stream(members: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """A tar archive of `members`, as chunks; the same files give the same bytes every time."""
    for name, path in members:
        if path.is_dir():
            yield _header(name, 0, True)
            continue
        size = path.stat().st_size
        yield _header(name, size, False)
        left = size
        with path.open("rb") as f:
            while left:
                block = f.read(min(CHUNK, left))
                if not block:
                    raise TransferError(
                        f"{path} shrank while it was being sent", fix="nothing should write it now; retry"
                    )
                left -= len(block)
                yield block
        if size % BLOCK:
            yield b"\0" * (BLOCK - size % BLOCK)
    yield b"\0" * (2 * BLOCK)


def stream_digest(chunks: Iterable[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return h.hexdigest(), n


def file_digest(path: Path) -> tuple[str, int]:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                yield block

    return stream_digest(chunks())


def _signature(members: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for name, p in members:
        st = p.stat()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def model_digest(home: Path, model_dir: Path) -> tuple[str, int]:
    """The sha256 and size of `model_dir`'s tar. Memoised under ARGOSY_HOME by a signature of names,
    sizes and mtimes, so each job does not re-read gigabytes of weights; any change re-hashes."""
    members = tree_members(model_dir)
    sig = _signature(members)
    memo_path = home / "train" / "model-digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(str(model_dir))
    if isinstance(hit, dict) and hit.get("signature") == sig:
        return str(hit["sha256"]), int(hit["bytes"])
    sha, size = stream_digest(tar_stream(members))
    memo[str(model_dir)] = {"signature": sig, "sha256": sha, "bytes": size}
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    tmp.replace(memo_path)
    return sha, size


# -- receiving ------------------------------------------------------------------------------------
def check_received(what: str, expected_sha: str, expected_size: int, got_sha: str, got_size: int) -> None:
    if got_size < expected_size:
        raise TransferError(
            f"{what} was truncated: {got_size} of {expected_size} bytes arrived",
            fix="the connection dropped mid-transfer; it is retried (nothing partial was kept)",
        )
    if got_size != expected_size or got_sha != expected_sha:
        raise TransferError(
            f"{what} is corrupt: sha256 {got_sha[:16]}… ({got_size} bytes) does not match the "
            f"announced {expected_sha[:16]}… ({expected_size} bytes)",
            fix="nothing was kept; the transfer is retried",
        )


def unpack(tar_path: Path, dest: Path, allowed_top: tuple[str, ...] | None = None) -> None:
    """Unpack a received tar into `dest` (which must not exist yet): regular files and directories
    only, every name relative and inside `dest`, and, if given, only `allowed_top` at the top."""
    try:
        with tarfile.open(tar_path, "r:") as tf:
            members = tf.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith("/") or ".." in parts or not (m.isreg() or m.isdir()):
                    raise TransferError(
                        f"the archive holds '{m.name}', which is not a plain file or directory inside it",
                        fix="nothing was unpacked; send the directory with argosy's own transfer",
                    )
                if allowed_top is not None and parts and parts[0] not in allowed_top:
                    raise TransferError(
                        f"the archive holds '{m.name}'; only {', '.join(allowed_top)} may be uploaded",
                        fix="upload the job's output directory as the agent does",
                    )
            tmp = dest.with_name(f".{dest.name}.unpack-{os.getpid()}-{time.monotonic_ns()}")
            try:
                tf.extractall(tmp, members=members, filter="data")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except tarfile.TarError as exc:
        raise TransferError(
            f"the archive cannot be read: {exc}", fix="nothing was unpacked; the transfer is retried"
        ) from exc
    tmp.mkdir(exist_ok=True)  # an empty archive still unpacks to a directory
    tmp.replace(dest)


def output_kind(output: Path) -> str:
    return "adapter" if (output / "adapter_config.json").is_file() else "merged"


def accept_output(
    spool: Path,
    job_dir: Path,
    wid: str,
    expected_sha: str,
    expected_size: int,
    got_sha: str,
    got_size: int,
    now: float,
) -> dict[str, Any]:
    """Install a node's uploaded output into the job's dir on the server, all or nothing.

    The spooled tar must match its announced size and digest, unpack safely, and hold a complete
    output (the check J's local path uses); only then do `output/`, `emissions.json` and
    `progress.jsonl` replace what the job dir had, and the receipt (upload.json) is written last.
    """
    from argosy.train.jobs import output_complete

    check_received("the output upload", expected_sha, expected_size, got_sha, got_size)
    staging = job_dir / f"upload.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        unpack(spool, staging, OUTPUT_MEMBERS)
        out = staging / "output"
        kind = output_kind(out)
        problem = output_complete(out, kind)
        if problem:
            raise TransferError(
                "the uploaded output is incomplete, so no model was registered: "
                + problem.replace(str(staging), "<upload>"),
                fix="the runner's output/ must be whole; check the job's logs on the node",
            )
        # The receipt goes first (its absence or a wrong wid means "not accepted"): removing it before
        # replacing files means a crash half-way never leaves an old receipt over new files.
        (job_dir / RECEIPT).unlink(missing_ok=True)
        for name in OUTPUT_MEMBERS:
            src = staging / name
            if not src.exists():
                continue
            dest = job_dir / name
            old = job_dir / f".{name}.old-{time.monotonic_ns()}"
            if dest.exists():
                dest.replace(old)
            src.replace(dest)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        receipt = {
            "wid": wid,
            "sha256": got_sha,
            "bytes": got_size,
            "kind": kind,
            "path": str(job_dir / "output"),
            "received_at": now,
        }
        tmp = job_dir / f".{RECEIPT}.tmp"
        tmp.write_text(json.dumps(receipt))
        tmp.replace(job_dir / RECEIPT)
        return receipt
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_receipt(job_dir: Path, wid: str) -> dict[str, Any] | None:
    """The accepted upload of workload `wid`, or None if none has been accepted."""
    try:
        r = json.loads((job_dir / RECEIPT).read_text())
    except (OSError, ValueError):
        return None
    return r if isinstance(r, dict) and r.get("wid") == wid else None


def progress_pairs(path: Path) -> list[list[Any]]:
    """progress.jsonl as [byte offset, line] pairs (the shape heartbeats carry), whole lines only."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    pairs, pos = [], 0
    for raw in data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]:
        pairs.append([pos, raw.decode("utf-8", "replace")])
        pos += len(raw) + 1
    return pairs


def spool_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-", suffix=".tar")
    os.close(fd)
    return Path(name)


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
