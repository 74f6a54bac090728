"""The training process: `python -m argosy.train.runner SPEC_JSON_PATH`.

Everything lives under the spec's output_dir (the job's work dir):
  progress.jsonl          events, one JSON object per line (argosy/train/progress.py)
  checkpoints/checkpoint-N/  written to a tmp dir and renamed; the 2 newest kept
  output/                 the result, written to output.tmp-* and renamed only when complete
  emissions.json          energy and CO2 (argosy/train/carbon.py); CodeCarbon's emissions.csv beside it

Re-running with the same spec resumes from the newest complete checkpoint (a run that already
finished re-announces its result). Exit codes: 0 done, 2 bad input (model, dataset, spec), 3 disk
full, 1 anything else, 143 stopped by SIGTERM (after a checkpoint at the next step boundary).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from argosy.core.errors import ArgosyError
from argosy.train.backends import get_backend
from argosy.train.backends.base import Session
from argosy.train.carbon import CarbonMeter
from argosy.train.progress import ProgressLog
from argosy.train.spec import TrainSpec, read_spec, validate_spec

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_DISK_FULL = 0, 1, 2, 3
KEEP_CHECKPOINTS = 2
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint made with different values of these cannot be resumed into this spec (lr, epochs and
# max_steps can change: training longer or slower from the same state is meaningful).
STRUCTURAL = (
    "base_model",
    "dataset",
    "method",
    "lora_r",
    "lora_alpha",
    "target_modules",
    "batch_size",
    "grad_accum",
    "max_seq_len",
    "seed",
    "val_fraction",
    "backend",
)
FREE_BYTES_FLOOR = 1 << 20  # a write that failed with less than this free was the disk filling


class DiskFullError(ArgosyError):
    pass


# -- files ------------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` and the directories themselves, so a rename publishes bytes on disk."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_disk_full(exc: BaseException, where: Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the cause chain, or a failed write (safetensors and torch.save wrap
    the OS error in their own types) while the filesystem is out of space."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left" in text or "StorageFull" in text or "os error 28" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FREE_BYTES_FLOOR


# -- checkpoints ------------------------------------------------------------------------------------


def fingerprint(spec: TrainSpec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in STRUCTURAL}


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place, with a readable state.json), oldest first."""
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if not m or not p.is_dir():
            continue
        try:
            state = json.loads((p / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("step") == int(m.group(1)):
            out.append((int(m.group(1)), p))
    return sorted(out)


def write_checkpoint(session: Session, root: Path, step: int, state: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-checkpoint-{step}-{os.getpid()}"
    final = root / f"checkpoint-{step}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        session.save_state(tmp)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True, default=str) + "\n")
        fsync_tree(tmp)
        if final.exists():  # the same step saved again after a resume: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException as exc:
        full = is_disk_full(exc, root) if isinstance(exc, Exception) else False
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise DiskFullError(
                f"the disk filled while writing checkpoint {step} under {root}",
                fix="free space on the node (or give the job a bigger disk) and resume the job",
            ) from exc
        raise
    for _, old in list_checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_partials(out: Path) -> None:
    """Leftovers of a process killed mid-write: never complete, never read."""
    for p in out.glob("output.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    ck = out / "checkpoints"
    if ck.is_dir():
        for p in ck.glob(".tmp-checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class StopFlag:
    signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only note it: the loop checkpoints at the next step boundary, where the state is consistent.
        self.signum = signum


@dataclass
class Run:
    spec: TrainSpec
    log: ProgressLog
    stop: StopFlag = field(default_factory=StopFlag)

    @property
    def out(self) -> Path:
        return Path(self.spec.output_dir)

    def fail(self, code: str, exc: BaseException, fix: str | None) -> None:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        self.log.emit_or_print("error", message=message, fix=fix, code=code)
        print(f"argosy train: {message}" + (f"\nfix: {fix}" if fix else ""), file=sys.stderr, flush=True)

    def execute(self) -> int:
        meter: CarbonMeter | None = None
        try:
            done = self._already_done()
            if done is not None:
                self.log.emit("done", **done)
                return EXIT_OK
            try:
                clean_partials(self.out)
                validate_spec(self.spec)
                backend = get_backend(self.spec.backend)
                problem = backend.unavailable_reason(self.spec)
                if problem:
                    raise ArgosyError(problem[0], fix=problem[1])
                backend.check(self.spec)  # before the tracker and torch: bad input fails in a second
                checkpoints = list_checkpoints(self.out / "checkpoints")
                state = self._resume_state(checkpoints)
                meter = CarbonMeter(self.spec, self.out, carried=state.get("carbon"))
                meter.start()
                session = backend.prepare(self.spec)
            except ArgosyError as exc:
                self.fail("bad_input", exc, exc.fix)
                return EXIT_BAD_INPUT
            meter.device = session.device
            return self._train(session, meter, checkpoints, state)
        except DiskFullError as exc:
            self.fail("disk_full", exc, exc.fix)
            return EXIT_DISK_FULL
        except Exception as exc:
            if is_disk_full(exc, self.out):
                self.fail(
                    "disk_full",
                    exc,
                    "free space on the node (or give the job a bigger disk) and resume the job",
                )
                return EXIT_DISK_FULL
            traceback.print_exc()
            self.fail(
                "crash",
                exc,
                "see the runner's log for the traceback; the job resumes from its last checkpoint",
            )
            return EXIT_CRASH
        finally:
            if meter is not None:
                with contextlib.suppress(Exception):  # best effort: a full disk must not mask the real error
                    write_json_atomic(self.out / "emissions.json", meter.stop())

    def _already_done(self) -> dict[str, Any] | None:
        record = self.out / "output" / "argosy_train.json"
        if not record.is_file():
            return None
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(record.read_text())["done"])
        return None

    def _resume_state(self, checkpoints: list[tuple[int, Path]]) -> dict[str, Any]:
        if not checkpoints:
            return {}
        step, path = checkpoints[-1]
        state = dict(json.loads((path / "state.json").read_text()))
        was = state.get("fingerprint", {})
        now = fingerprint(self.spec)
        changed = sorted(k for k in now if was.get(k) != now[k])
        if changed:
            raise ArgosyError(
                f"{path} was made with different {', '.join(changed)}; it cannot be resumed into this spec",
                fix="rerun changed parameters in a new output_dir (a new job), or delete its checkpoints/",
            )
        state["path"] = str(path)
        return state

    def _train(
        self, session: Session, meter: CarbonMeter, checkpoints: list[tuple[int, Path]], state: dict[str, Any]
    ) -> int:
        spec, log = self.spec, self.log
        start_step = 0
        if state:
            session.load_state(Path(state["path"]))
            start_step = int(state["step"])
        tokens = int(state.get("tokens", 0))
        last_loss = state.get("last_loss")
        total = session.total_steps
        log.emit(
            "start",
            total_steps=total,
            resumed_from_step=start_step if state else None,
            device=session.device,
            backend=spec.backend,
        )
        step_time: float | None = None
        step = start_step
        ran = 0

        def checkpoint(at: int) -> None:
            ck_state = {
                "step": at,
                "tokens": tokens,
                "last_loss": last_loss,
                "total_steps": total,
                "fingerprint": fingerprint(spec),
                "carbon": meter.totals(),
            }
            path = write_checkpoint(session, self.out / "checkpoints", at, ck_state)
            log.emit("checkpoint", step=at, path=str(path.resolve()))

        while step < total:
            if self.stop.signum is not None and ran == 0:
                log.emit("stopped", step=step)  # nothing new since the checkpoint it resumed from
                return 128 + self.stop.signum
            t0 = time.perf_counter()
            res = session.train_step(step + 1)
            dt = time.perf_counter() - t0
            step += 1
            ran += 1
            tokens += res.tokens
            last_loss = res.loss
            step_time = dt if step_time is None else 0.8 * step_time + 0.2 * dt
            kwh, co2 = meter.so_far()
            log.emit(
                "step",
                step=step,
                total_steps=total,
                epoch=res.epoch,
                loss=res.loss,
                lr=res.lr,
                grad_norm=res.grad_norm,
                tokens_per_s=res.tokens / dt if dt > 0 else None,
                eta_s=round(step_time * (total - step), 2),
                energy_kwh=kwh,
                co2_kg=co2,
            )
            if spec.eval_every and session.has_validation and step % spec.eval_every == 0:
                log.emit("eval", step=step, eval_loss=session.evaluate())
            if self.stop.signum is not None:
                checkpoint(step)
                log.emit("stopped", step=step)
                return 128 + self.stop.signum
            if step % spec.save_every == 0 and step < total:
                checkpoint(step)

        eval_loss = None
        if session.has_validation:
            eval_loss = session.evaluate()
            if not (spec.eval_every and total % spec.eval_every == 0 and ran):
                log.emit("eval", step=total, eval_loss=eval_loss)
        log.emit("saving")
        emissions = meter.stop()
        write_json_atomic(self.out / "emissions.json", emissions)
        done = {"output": str((self.out / "output").resolve()), "kind": "", "final_loss": last_loss}
        done.update(steps=total, tokens=tokens)
        kind = self._save_output(session, done, eval_loss, emissions)
        done["kind"] = kind
        log.emit("done", **done)
        return EXIT_OK

    def _save_output(
        self, session: Session, done: dict[str, Any], eval_loss: float | None, emissions: dict[str, Any]
    ) -> str:
        final = self.out / "output"
        tmp = self.out / f"output.tmp-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            kind = session.save_output(tmp)
            record = {
                "spec": self.spec.to_dict(),
                "metrics": {"final_loss": done["final_loss"], "eval_loss": eval_loss, "steps": done["steps"]},
                "emissions": emissions,
                "done": {**done, "kind": kind},
            }
            (tmp / "argosy_train.json").write_text(
                json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
            )
            fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.out)
            return kind
        except BaseException as exc:
            full = isinstance(exc, Exception) and is_disk_full(exc, self.out)
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise DiskFullError(
                    f"the disk filled while saving the trained {self.spec.method} result to {final}; nothing was kept",
                    fix="free space on the node (or give the job a bigger disk) and rerun: it resumes from its last checkpoint",
                ) from exc
            raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m argosy.train.runner SPEC_JSON_PATH", file=sys.stderr)
        return EXIT_BAD_INPUT
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stop = StopFlag()
    stop.install()  # before anything slow, so an early SIGTERM is a clean stop, not a kill
    try:
        spec = read_spec(Path(args[0]))
        out = Path(spec.output_dir)
        out.mkdir(parents=True, exist_ok=True)
    except ArgosyError as exc:
        print(f"argosy train: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"argosy train: cannot create the output dir: {exc}", file=sys.stderr, flush=True)
        return EXIT_DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_CRASH
    return Run(spec, ProgressLog(out / "progress.jsonl"), stop).execute()


if __name__ == "__main__":
    sys.exit(main())
