"""The microvm backend: a real QEMU microvm (TCG) per run. Slow (~10-15 s a run on a busy 2-core node)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import SandboxRequestError
from argosy.sandbox.languages import Limits
from argosy.sandbox.microvm import MicroVMBackend, _cpio
from argosy.sandbox.models import ExecRequest
from argosy.sandbox.service import LocalRunner

# Shared with the other test builds (tests/conftest.py): the kernel download is cached across runs.
from tests.conftest import TEST_CACHE  # noqa: E402  (one definition for the whole suite)

from .conftest import fresh_config


def test_cpio_archive_is_newc() -> None:
    data = _cpio([("d", 0o040755, b""), ("d/f", 0o100644, b"hello")])
    assert data.startswith(b"070701") and b"d/f\x00" in data and b"hello" in data and b"TRAILER!!!" in data
    assert len(data) % 512 == 0


def test_doctor_says_why_when_there_is_no_image(tmp_path: Path) -> None:
    vm = MicroVMBackend(SandboxConfig(image_dir=tmp_path))
    ok, why = vm.available()
    assert not ok and ("build-image" in why or "QEMU" in why)


@pytest.fixture(scope="module")
def vm_config() -> Iterator[SandboxConfig]:
    if shutil.which("qemu-system-x86_64") is None or not Path("/bin/busybox").exists():
        pytest.skip("needs qemu-system-x86 and busybox-static (see .ci/apt-sandbox.txt)")
    # The image (kernel download included) is cached across runs with the other test builds.
    cfg = fresh_config(backend="microvm", image_dir=TEST_CACHE / "sandbox")
    vm = MicroVMBackend(cfg)
    vm.build_image()
    smoke = vm.smoke()
    if not smoke.get("ok"):
        pytest.fail(f"the microVM did not boot: {smoke}")
    yield cfg


@pytest.mark.slow
def test_python_runs_in_a_vm(vm_config: SandboxConfig) -> None:
    runner = LocalRunner(vm_config)
    try:
        res = runner.execute(
            ExecRequest(code="import os, sys\nprint(os.getuid(), open('data.txt').read(), sys.stdin.read())",
                        files={"data.txt": "from a file"}, stdin="and stdin", timeout_ms=30000)
        )  # fmt: skip
        assert res.backend == "microvm" and res.status == "ok", res.stderr
        assert res.stdout == "65534 from a file and stdin\n"
        with pytest.raises(SandboxRequestError):
            runner.execute(ExecRequest(language="ruby", code="puts 1"))
        with pytest.raises(SandboxRequestError):
            runner.execute(ExecRequest(code="print(1)", network=True))
    finally:
        runner.close()


@pytest.mark.slow
def test_qemu_runs_unprivileged(vm_config: SandboxConfig) -> None:
    if os.geteuid() != 0:
        pytest.skip("as a non-root agent QEMU runs as the agent's user")
    import threading

    import psutil

    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not seen:
            for p in psutil.process_iter(["name", "uids"]):
                if p.info["name"] == "qemu-system-x86_64" and p.info["uids"]:
                    seen.append(p.info["uids"].real)
            stop.wait(0.05)

    t = threading.Thread(target=watch)
    t.start()
    res = MicroVMBackend(vm_config).run_job(["sh", "-c", "echo up"], Limits(20000, 64, 1, 4096, 16, 1), {})
    stop.set()
    t.join()
    assert res.stdout == b"up\n"
    assert seen and set(seen) == {vm_config.uid}


@pytest.mark.slow
def test_vm_timeout_and_memory(vm_config: SandboxConfig) -> None:
    vm = MicroVMBackend(vm_config)
    res = vm.run_job(["python3", "-c", "while True: pass"], Limits(1000, 128, 1, 4096, 16, 1), {})
    assert res.timed_out and res.signal == 9
    res = vm.run_job(["python3", "-c", "x = bytearray(600 * 2**20)"], Limits(20000, 128, 1, 4096, 16, 1), {})
    assert (
        res.exit_code != 0 or res.oom_killed
    )  # the VM's RAM is the limit: MemoryError or the guest's OOM killer
