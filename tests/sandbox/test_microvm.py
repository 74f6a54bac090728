"""The microvm backend: a real QEMU microvm (TCG) per run, booting the real image (kernel, initramfs,
rootfs with every toolchain this node has; built once into the test cache, ~30 s, then ~2 s to find
it up to date). Slow: 3-8 s a run on a quiet 2-core node; the compiled languages add their compile
in the VM (go build ~7 s, rustc ~10 s, javac ~10 s; about twice that while other suites load the
machine). Go and Java stay in: they are the slowest toolchains, and what a TCG deadline has to fit."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import SandboxRequestError
from argosy.sandbox.languages import Limits
from argosy.sandbox.microvm import MicroVMBackend, QemuVMM, VMConfig, _closure, _cpio, _resolve_in
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
        # Also, in the same VM: the toolchains' disk is read-only, the job's own setup (/job) and the
        # guest's block device are not the code's to change, and the host's files are not there.
        probe = (
            "import errno, os, sys\n"
            "print(os.getuid(), open('data.txt').read(), sys.stdin.read())\n"
            "for p in ('/usr/bin/python3', '/job/run.sh', '/dev/vda'):\n"
            "    try:\n"
            "        open(p, 'ab')\n"
            "        print('writable', p)\n"
            "    except OSError as e:\n"
            "        print(errno.errorcode[e.errno], p)\n"
            "print(os.path.exists('/work/main'), os.path.exists('/root/.argosy'))\n"
        )
        res = runner.execute(
            ExecRequest(code=probe, files={"data.txt": "from a file"}, stdin="and stdin", timeout_ms=30000)
        )
        assert res.backend == "microvm" and res.status == "ok", res.stderr
        assert res.stdout.splitlines() == [
            "65534 from a file and stdin",
            "EROFS /usr/bin/python3",
            "EACCES /job/run.sh",
            "EACCES /dev/vda",
            "False False",
        ]
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
    # The step's memory limit is a cgroup inside the guest: its OOM killer, reported as such.
    hog = "x = [bytearray(2**20) for _ in range(300)]"
    res = vm.run_job(["python3", "-c", hog], Limits(20000, 128, 1, 4096, 16, 1), {})
    assert res.oom_killed and res.signal == 9, res


def test_qemu_argv_is_built_from_the_vm_config() -> None:
    argv = QemuVMM("/usr/bin/qemu").argv(
        VMConfig("/dev/fd/3", "/dev/fd/4", "/dev/fd/5", 448, 2, "console=ttyS0")
    )
    assert argv[0] == "/usr/bin/qemu"
    assert argv[argv.index("-m") + 1] == "448" and argv[argv.index("-smp") + 1] == "2"
    drive = argv[argv.index("-drive") + 1]
    assert "file=/dev/fd/5" in drive and "readonly=on" in drive
    assert argv[argv.index("-kernel") + 1] == "/dev/fd/3" and argv[argv.index("-initrd") + 1] == "/dev/fd/4"


def test_package_closure_follows_installed_alternatives_and_virtuals() -> None:
    db = {
        "rustc": {"version": "1", "deps": [["gcc"], ["libc-dev"], ["clang", "binutils"]]},
        "gcc": {"version": "1", "deps": []},
        "binutils": {"version": "1", "deps": []},
        "libc6-dev": {"version": "1", "deps": []},
        "libc-dev": {"version": "", "deps": [["libc6-dev"]], "virtual": True},
    }
    assert _closure({"rustc"}, db) == {"rustc", "gcc", "binutils", "libc6-dev"}


def test_paths_resolve_inside_the_image_tree(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/jvm/bin").mkdir(parents=True)
    (tmp_path / "usr/lib/jvm/bin/javac").write_text("")
    (tmp_path / "etc/alternatives").mkdir(parents=True)
    (tmp_path / "etc/alternatives/javac").symlink_to("/usr/lib/jvm/bin/javac")
    (tmp_path / "usr/bin").mkdir()
    (tmp_path / "usr/bin/javac").symlink_to("/etc/alternatives/javac")
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "usr/bin/gone").symlink_to("/usr/lib/nothing")
    assert _resolve_in(tmp_path, "/bin/javac") == tmp_path / "usr/lib/jvm/bin/javac"
    assert _resolve_in(tmp_path, "/usr/bin/gone") is None  # the host's /usr/lib does not count


HELLO = {
    "python": 'print("hello from python")',
    "node": 'console.log("hello from node")',
    "bash": 'echo "hello from bash"',
    "ruby": 'puts "hello from ruby"',
    # Go: stdin and args reach the run step, not the compiler.
    "go": 'package main\nimport ("bufio"; "fmt"; "os")\nfunc main() {\n'
    '  s, _ := bufio.NewReader(os.Stdin).ReadString(0)\n  fmt.Println("hello from go", os.Args[1], s)\n}\n',
    "rust": 'fn main() { println!("hello from rust"); }\n',
    "c": '#include <stdio.h>\nint main(void) { puts("hello from c"); return 0; }\n',
    "cpp": '#include <cstdio>\nint main() { std::printf("hello from %s\\n", "cpp"); }\n',
    "java": 'public class Main { public static void main(String[] a) { System.out.println("hello from java"); } }\n',
}


@pytest.fixture(scope="module")
def vm_runner(vm_config: SandboxConfig) -> Iterator[LocalRunner]:
    runner = LocalRunner(vm_config)
    yield runner
    runner.close()


@pytest.mark.slow
@pytest.mark.parametrize("lang", sorted(HELLO))
def test_every_language_runs_in_a_vm(vm_runner: LocalRunner, lang: str) -> None:
    vm = MicroVMBackend(vm_runner.config)
    if lang not in vm.image_languages:
        why = (vm.manifest() or {}).get("missing", {}).get(lang, "not in the manifest")
        pytest.skip(f"the image does not carry {lang} on this node: {why}")
    go = lang == "go"
    res = vm_runner.execute(
        ExecRequest(language=lang, code=HELLO[lang], args=["arg"] if go else [], stdin="in" if go else None)
    )
    assert res.backend == "microvm" and res.status == "ok", (res.stderr, res.compile)
    assert res.stdout == ("hello from go arg in\n" if go else f"hello from {lang}\n")
    assert res.version == vm.image_languages[lang]
    compiled = vm_runner.table.get(lang).compiled
    assert (res.compile is not None) == compiled
    if compiled:
        assert res.compile is not None and res.compile.exit_code == 0


@pytest.mark.slow
def test_c_compile_error_is_reported_as_such(vm_runner: LocalRunner) -> None:
    res = vm_runner.execute(ExecRequest(language="c", code="int main(void) { return x; }\n"))
    assert res.status == "compile_error" and res.exit_code == 1
    assert res.compile is not None and "'x' undeclared" in res.compile.stderr
    assert "'x' undeclared" in res.stderr and res.stdout == ""


@pytest.mark.slow
def test_a_language_the_image_lacks_is_refused(vm_config: SandboxConfig, tmp_path: Path) -> None:
    """The manifest decides: an image built without ruby refuses it (no VM is booted)."""
    real = MicroVMBackend(vm_config)
    d = tmp_path / "microvm"
    d.mkdir()
    for p in (real.kernel, real.initramfs, real.rootfs, real.modules_dir, real.smoke_file):
        (d / p.name).symlink_to(p)
    manifest = real.manifest() or {}
    langs = {k: v for k, v in manifest["languages"].items() if k != "ruby"}
    (d / "manifest.json").write_text(json.dumps({**manifest, "languages": langs}))
    runner = LocalRunner(fresh_config(backend="microvm", image_dir=tmp_path))
    try:
        with pytest.raises(SandboxRequestError, match="not ruby"):
            runner.execute(ExecRequest(language="ruby", code="puts 1"))
    finally:
        runner.close()


@pytest.mark.slow
def test_an_output_flood_keeps_the_cap_and_says_so(vm_runner: LocalRunner) -> None:
    res = vm_runner.execute(
        ExecRequest(code="while True: print('x' * 1000)", max_output_bytes=100_000, timeout_ms=20000)
    )
    assert res.status == "output_limit" and res.truncated and not res.timed_out
    assert len(res.stdout) == 100_000 and set(res.stdout) <= {"x", "\n"}
