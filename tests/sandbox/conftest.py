"""Fixtures: real sandboxes on this machine, each test module with its own base dir on tmpfs."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.sandbox.config import SandboxConfig, default_base_dir
from argosy.sandbox.languages import LanguageTable
from argosy.sandbox.service import LocalRunner
from tests.conftest import TEST_CACHE

BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(
    BWRAP is None, reason="bubblewrap not installed (apt-get install bubblewrap)"
)


def fresh_config(**kw: object) -> SandboxConfig:
    # Under /dev/shm, not pytest's tmp_path: the sandbox uid must be able to traverse to its work dir,
    # and /tmp/pytest-of-root is 0700.
    base = default_base_dir().parent / f"argosy-test-{uuid.uuid4().hex[:10]}"
    return SandboxConfig(base_dir=base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session", autouse=True)
def _remove_test_base_dirs() -> Iterator[None]:
    """Every base dir fresh_config made during the session goes at its end."""
    started = time.time()
    yield
    for d in default_base_dir().parent.glob("argosy-test-*"):
        with contextlib.suppress(OSError):
            if d.stat().st_mtime >= started - 1:
                shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def runner() -> Iterator[LocalRunner]:
    if BWRAP is None:
        pytest.skip("bubblewrap not installed (apt-get install bubblewrap)")
    r = LocalRunner(fresh_config(max_concurrent=2))
    yield r
    r.close()
    shutil.rmtree(r.config.base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def table() -> LanguageTable:
    return LanguageTable.load()


def toolchain_missing(table: LanguageTable, lang: str) -> str | None:
    return (
        None
        if table.get(lang).toolchain_path()
        else f"{lang} toolchain not installed (see .ci/apt-sandbox.txt)"
    )


def is_root() -> bool:
    return os.geteuid() == 0


def base_of(r: LocalRunner) -> Path:
    return r.config.base_dir


def _vm_tools_or_skip() -> None:
    if shutil.which("qemu-system-x86_64") is None or not Path("/bin/busybox").exists():
        pytest.skip("needs qemu-system-x86 and busybox-static (see .ci/apt-sandbox.txt)")


@pytest.fixture(scope="session")
def vm_kernel() -> Path:
    """The microVM's Debian kernel (apt-get download on a node without one in /boot), cached with
    the other test builds: made here, not skipped for, so a fresh machine runs the tests that need it
    whatever order they come in."""
    from argosy.sandbox.microvm import MicroVMBackend

    _vm_tools_or_skip()
    vm = MicroVMBackend(SandboxConfig(image_dir=TEST_CACHE / "sandbox"))
    vm.image_dir.mkdir(parents=True, exist_ok=True)
    vm.image._kernel([])
    return vm.kernel


@pytest.fixture(scope="session")
def vm_config() -> SandboxConfig:
    """A microvm config whose image (kernel, initramfs, rootfs) is built, cached across runs, and has
    booted once here."""
    from argosy.sandbox.microvm import MicroVMBackend

    _vm_tools_or_skip()
    cfg = fresh_config(backend="microvm", image_dir=TEST_CACHE / "sandbox")
    vm = MicroVMBackend(cfg)
    vm.build_image()
    smoke = vm.smoke()
    if not smoke.get("ok"):
        pytest.fail(f"the microVM did not boot: {smoke}")
    return cfg
