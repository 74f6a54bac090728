"""A training run on a node that does not share the server's filesystem.

`python -m argosy.train.remote REMOTE_JSON` is what the agent starts for such a job (instead of the
runner itself): it fetches the inputs from the server over the node's authenticated agent API,
runs the trainer (`python -m argosy.train.runner spec.json`) as its child, and when the trainer
succeeds uploads the output back. Its exit code is the runner's, so the job machinery reads it the
same way, plus EXIT_TRANSFER when the inputs or the output could not be moved after bounded retries
(the reason is the last `error` event in progress.jsonl, like the runner's own errors).

Inputs are cached on the node by digest under ARGOSY_HOME/train/inputs, so a restart (a crash
retried, a resumed job) downloads nothing again and the runner's checkpoints, which name the input
paths, stay valid. The agent's key travels in ARGOSY_AGENT_TOKEN, never on the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from argosy.core.errors import ArgosyError
from argosy.train import transfer
from argosy.train.progress import ProgressLog

EXIT_BAD_INPUT = 2
EXIT_TRANSFER = 4
ATTEMPTS = 4  # per transfer; back-off 1, 2, 4 s between them


class FatalTransfer(ArgosyError):
    """Retrying cannot help (refused, too large): stop at once."""


def retry(what: str, fn: Callable[[], Any], log: Callable[[str], None]) -> Any:
    delay = 1.0
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn()
        except FatalTransfer:
            raise
        except (httpx.HTTPError, OSError, transfer.TransferError) as exc:
            if attempt == ATTEMPTS:
                raise ArgosyError(
                    f"{what} failed {ATTEMPTS} times; last: {exc}",
                    fix="check that the node reaches the server (server.public_url) and has free disk",
                ) from exc
            log(f"{what} failed ({exc}); retry {attempt + 1}/{ATTEMPTS} in {delay:.0f}s")
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class Remote:
    def __init__(self, cfg: dict[str, Any], token: str) -> None:
        self.cfg = cfg
        self.spec: dict[str, Any] = dict(cfg["spec"])
        self.work = Path(self.spec["output_dir"])
        self.inputs_dir = Path(cfg["home"]) / "train" / "inputs"
        base = f"{str(cfg['server_url']).rstrip('/')}/api/v1/agents/{cfg['node_id']}/train"
        self.job_url = f"{base}/{cfg['job_id']}"
        self.upload_url = f"{base}/{cfg['wid']}/output"
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60.0)
        self.events = ProgressLog(self.work / "progress.jsonl")

    def log(self, msg: str) -> None:
        print(f"[argosy-remote] {msg}", flush=True)

    def _check(self, r: httpx.Response) -> None:
        if r.status_code in (401, 403, 404, 409, 413):
            try:
                body = r.json()
                msg, fix = str(body.get("message", r.text)), body.get("fix")
            except ValueError:
                msg, fix = r.text[:300], None
            raise FatalTransfer(f"the server refused ({r.status_code}): {msg}", fix=fix)
        r.raise_for_status()

    # -- inputs ----------------------------------------------------------------------------------
    def _download(self, url: str, dest: Path, sha: str, size: int) -> None:
        spool = transfer.spool_file(dest.parent)
        try:
            with self.client.stream("GET", url) as r:
                self._check(r)
                with spool.open("wb") as f:
                    got = transfer.stream_digest(_tee(r.iter_bytes(transfer.CHUNK), f))
            transfer.check_received(url.rsplit("/", 1)[-1], sha, size, *got)
            spool.replace(dest)
        finally:
            transfer.remove(spool)

    def fetch_dataset(self, info: dict[str, Any]) -> Path:
        digest, size = str(info["digest"]), int(info["bytes"])
        dest = self.inputs_dir / "datasets" / f"{digest}.jsonl"
        if dest.is_file():
            self.log(f"dataset {digest[:12]} is cached on this node")
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"fetching dataset {digest[:12]} ({size} bytes)")
        retry(
            "downloading the dataset",
            lambda: self._download(f"{self.job_url}/dataset", dest, digest, size),
            self.log,
        )
        return dest

    def fetch_model(self, info: dict[str, Any]) -> Path:
        if info.get("kind") == "hub":
            return self.resolve_hub(str(info["id"]))
        sha, size = str(info["sha256"]), int(info["bytes"])
        dest = self.inputs_dir / "models" / sha
        if dest.is_dir():
            self.log(f"base model {sha[:12]} is cached on this node")
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"fetching the base model {info.get('name', '')} ({size / 2**20:.1f} MiB)")

        def once() -> None:
            tar = dest.parent / f".{sha}.tar"
            try:
                self._download(f"{self.job_url}/base-model", tar, sha, size)
                transfer.unpack(tar, dest)
            finally:
                transfer.remove(tar)

        retry("downloading the base model", once, self.log)
        return dest

    def resolve_hub(self, repo_id: str) -> Path:
        """A hub id the server has no copy of: this node downloads it itself (needs its internet)."""
        self.log(f"resolving {repo_id} from the Hugging Face Hub on this node")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id))
        except Exception as exc:  # offline, gated, unknown id: the runner cannot start without it
            raise FatalTransfer(
                f"this node cannot download base model '{repo_id}' from the Hugging Face Hub: {exc}",
                fix="give the node internet access (and HF_TOKEN for gated models), or pass a model "
                "directory on the server so it is shipped to the node",
            ) from exc

    # -- output ----------------------------------------------------------------------------------
    def members(self) -> list[tuple[str, Path]]:
        out = [("output", self.work / "output"), *transfer.tree_members(self.work / "output", "output")]
        out += [(n, self.work / n) for n in ("emissions.json", "progress.jsonl") if (self.work / n).is_file()]
        return out

    def upload(self) -> dict[str, Any]:
        def once() -> dict[str, Any]:
            members = self.members()  # hashed, then sent: the same bytes both times
            sha, size = transfer.stream_digest(transfer.tar_stream(members))
            r = self.client.put(
                self.upload_url,
                content=transfer.tar_stream(members),
                headers={
                    "Content-Length": str(size),
                    "X-Argosy-Size": str(size),
                    "X-Argosy-Sha256": sha,
                    "Content-Type": "application/x-tar",
                },
                timeout=httpx.Timeout(60.0, read=600.0),
            )
            self._check(r)
            self.log(f"output uploaded ({size / 2**20:.1f} MiB, sha256 {sha[:12]})")
            return dict(r.json())

        return retry("uploading the output", once, self.log)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            r = retry("asking the server for the job's inputs", lambda: self._inputs(), self.log)
            spec = {
                **self.spec,
                "dataset": str(self.fetch_dataset(r["dataset"])),
                "base_model": str(self.fetch_model(r["base_model"])),
            }
        except ArgosyError as exc:
            self.events.emit_or_print("error", message=exc.message, fix=exc.fix, code="transfer")
            return EXIT_BAD_INPUT if isinstance(exc, FatalTransfer) else EXIT_TRANSFER
        path = self.work / "spec.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        code = self.train(path)
        if code != 0:
            return code
        try:
            self.upload()
        except ArgosyError as exc:
            self.events.emit_or_print(
                "error", message=f"training finished but {exc.message}", fix=exc.fix, code="transfer"
            )
            return EXIT_TRANSFER
        return 0

    def _inputs(self) -> dict[str, Any]:
        r = self.client.get(f"{self.job_url}/inputs")
        self._check(r)
        return dict(r.json())

    def train(self, spec_path: Path) -> int:
        # Same process group as this wrapper: the agent's group SIGTERM reaches the runner directly
        # (it checkpoints and exits 143); we only wait for it and pass its code on.
        child = subprocess.Popen(
            [sys.executable, "-m", "argosy.train.runner", str(spec_path)],
            cwd=str(self.work),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def forward(signum: int, _frame: Any) -> None:
            if child.poll() is None:
                child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return child.wait()


def _tee(chunks: Iterator[bytes], f: Any) -> Iterator[bytes]:
    for c in chunks:
        f.write(c)
        yield c


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m argosy.train.remote REMOTE_JSON", file=sys.stderr)
        return EXIT_BAD_INPUT
    cfg = json.loads(Path(args[0]).read_text())
    token = os.environ.get("ARGOSY_AGENT_TOKEN", "")
    if not token:
        print("ARGOSY_AGENT_TOKEN is not set", file=sys.stderr)
        return EXIT_BAD_INPUT
    return Remote(cfg, token).run()


if __name__ == "__main__":
    sys.exit(main())
