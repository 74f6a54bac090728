"""The microvm backend: a real QEMU microvm (TCG) per run, booting the real image (kernel, initramfs,
rootfs with every toolchain this node has; built once into the test cache, ~30 s, then ~2 s to find
it up to date). Slow: 3-8 s a run on a quiet 2-core node; the compiled languages add their compile
in the VM (go build ~7 s, rustc ~10 s, javac ~10 s; about twice that while other suites load the
machine). Go and Java stay in: they are the slowest toolchains, and what a TCG deadline has to fit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.core.errors import ConfigError
from argosy.sandbox import firecracker as fc
from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import SandboxError, SandboxRequestError
from argosy.sandbox.languages import Limits
from argosy.sandbox.microvm import KERNEL_ARGS, TCG_COMPILE_FACTOR, MicroVMBackend, QemuVMM, VMConfig
from argosy.sandbox.models import ExecRequest
from argosy.sandbox.service import LocalRunner
from argosy.sandbox.vmimage import INIT, _closure, _cpio, _resolve_in

from .conftest import fresh_config


def test_cpio_archive_is_newc() -> None:
    data = _cpio([("d", 0o040755, b""), ("d/f", 0o100644, b"hello")])
    assert data.startswith(b"070701") and b"d/f\x00" in data and b"hello" in data and b"TRAILER!!!" in data
    assert len(data) % 512 == 0


def test_doctor_says_why_when_there_is_no_image(tmp_path: Path) -> None:
    vm = MicroVMBackend(SandboxConfig(image_dir=tmp_path))
    ok, why = vm.available()
    assert not ok and ("build-image" in why or "QEMU" in why)


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


# -- choosing the VMM ------------------------------------------------------------------------------

FC_FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "firecracker-api.json").read_text())


def _write_smoke(vm: MicroVMBackend, records: dict[str, dict[str, object]]) -> None:
    vm.image_dir.mkdir(parents=True, exist_ok=True)
    top = next((r for r in records.values() if r.get("ok")), {"ok": False})
    vm.smoke_file.write_text(json.dumps({**top, "vmms": records}))


def test_vmm_setting_is_strict() -> None:
    with pytest.raises(ConfigError, match="auto, firecracker, qemu, qemu-kvm, qemu-tcg"):
        SandboxConfig.from_env(env={"ARGOSY_SANDBOX_VMM": "kvm"})
    cfg = SandboxConfig.from_env(env={"ARGOSY_SANDBOX_VMM": "qemu", "ARGOSY_SANDBOX_FIRECRACKER": "/opt/fc"})
    assert cfg.vmm == "qemu" and cfg.firecracker_binary == Path("/opt/fc")
    assert [v.name for v in MicroVMBackend(cfg).candidates()] == ["qemu-kvm", "qemu-tcg"]


def test_vmm_choice_on_this_node(tmp_path: Path) -> None:
    """The real checks on this machine: no Firecracker binary, so Firecracker is not chosen and
    the reason says so; QEMU+KVM only with its KVM probe as the sandbox uid and a smoke boot."""
    vm = MicroVMBackend(SandboxConfig(image_dir=tmp_path))
    assert [v.name for v in vm.candidates()] == ["firecracker", "qemu-kvm", "qemu-tcg"]
    choice = vm.choose()
    assert choice.vmm is None  # nothing smoke-booted yet
    reasons = {name: (ok, why) for name, ok, why in choice.considered}
    if fc.find_firecracker() is None:
        assert reasons["firecracker"] == (False, vm.precheck(vm.candidates()[0])[1])
        assert "no firecracker binary" in reasons["firecracker"][1]
    kvm_ok, kvm_why = vm.kvm_probe()
    if not kvm_ok:
        assert reasons["qemu-kvm"] == (False, kvm_why)
    if shutil.which("qemu-system-x86_64"):
        assert "never smoke-booted" in reasons["qemu-tcg"][1]
        # A record says QEMU/TCG booted: it is chosen, with the TCG compile factor.
        _write_smoke(vm, {"qemu-tcg": {"vmm": "qemu-tcg", "ok": True, "seconds": 3.5}})
        vm = MicroVMBackend(SandboxConfig(image_dir=tmp_path))
        assert vm.vmm is not None and vm.vmm.name == "qemu-tcg"
        assert vm.compile_timeout_factor == TCG_COMPILE_FACTOR
        checks = {c.name: c for c in vm.checks()}
        assert checks["vmm"].ok and checks["vmm"].detail.startswith("qemu-tcg")
        assert checks["vmm qemu-tcg"].detail.startswith("in use: booted")
        assert not checks["vmm firecracker"].ok and checks["vmm firecracker"].detail
        # A record from before there was a choice (no "vmm") is QEMU/TCG's.
        vm.smoke_file.write_text(json.dumps({"at": 1.0, "ok": True, "seconds": 4.0}))
        assert MicroVMBackend(SandboxConfig(image_dir=tmp_path)).choose().vmm.name == "qemu-tcg"  # type: ignore[union-attr]
        # Forced to Firecracker where it cannot run: no VMM, and the reason is Firecracker's.
        forced = MicroVMBackend(SandboxConfig(image_dir=tmp_path, vmm="firecracker"))
        assert forced.vmm is None and [n for n, _, _ in forced.choose().considered] == ["firecracker"]


def test_qemu_args_follow_the_accelerator() -> None:
    vm = VMConfig("/dev/fd/3", "/dev/fd/4", "/dev/fd/5", 448, 2, "console=ttyS0")
    tcg, kvm = QemuVMM("/usr/bin/qemu"), QemuVMM("/usr/bin/qemu", "kvm")
    assert tcg.argv(vm)[tcg.argv(vm).index("-accel") + 1] == "tcg"
    argv = kvm.argv(vm)
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"
    # The TCG clock settings are TCG's; under KVM the guest calibrates itself and compiles at speed.
    assert "tsc_early_khz" in tcg.kernel_args and "tsc_early_khz" not in kvm.kernel_args
    assert tcg.compile_timeout_factor == TCG_COMPILE_FACTOR and kvm.compile_timeout_factor == 1.0
    assert kvm.boot_timeout_s < tcg.boot_timeout_s
    assert fc.FirecrackerVMM.kernel_file == "vmlinux" and "tsc" not in fc.FirecrackerVMM.kernel_args
    with pytest.raises(SandboxError):
        QemuVMM("/usr/bin/qemu", "hvf")


@pytest.mark.slow
def test_guest_reboot_ends_qemu_cleanly(tmp_path: Path, vm_kernel: Path) -> None:
    """/init ends the VM with `reboot -f` (Firecracker has no power-off): under QEMU's -no-reboot
    that is a clean exit, with the TCG command line the backend uses."""
    assert "reboot -f" in INIT and "poweroff" not in INIT
    kernel = vm_kernel
    busybox = Path("/bin/busybox").read_bytes()
    init = b"#!/bin/busybox sh\n/bin/busybox echo ===REBOOTING===\n/bin/busybox reboot -f\n"
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(
        _cpio([("bin", 0o040755, b""), ("bin/busybox", 0o100755, busybox), ("init", 0o100755, init)])
    )
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 2**20)
    argv = QemuVMM("qemu-system-x86_64").argv(
        VMConfig(str(kernel), str(initrd), str(disk), 128, 1, KERNEL_ARGS)
    )
    t0 = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert b"===REBOOTING===" in r.stdout, r.stdout[-2000:]
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    print(f"boot to reboot and QEMU exit: {time.monotonic() - t0:.1f} s")


STAND_IN = r"""#!/bin/sh
# A stand-in for a Firecracker release binary: answers --version like one, and otherwise records
# what it was started with (argv, the config, the kernel's first bytes) and exits as a failed start.
if [ "$1" = --version ]; then echo "Firecracker v1.13.1"; exit 0; fi
out=@OUT@
echo "$@" >"$out/argv"
while [ "$1" != --config-file ]; do shift; done
cat "$2" >"$out/config.json"
k=$(sed -n 's/.*"kernel_image_path":"\([^"]*\)".*/\1/p' "$out/config.json")
head -c 4 "$k" | od -An -c | tr -d ' ' >"$out/kernel-magic"
echo "no KVM for a stand-in" >&2
exit 1
"""


@pytest.fixture()
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """A `firecracker` script on PATH, and a KVM node the sandbox uid can open (the same device
    as /dev/kvm, made with mknod in a private dir: the real one is root-only here), so that the
    real KVM probe passes as that uid. The dir is 0755: the VMM runs as the sandbox uid."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod, and setpriv to the sandbox uid)")
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm: the KVM probe cannot pass")
    d = Path(tempfile.mkdtemp(prefix="argosy-fc-stand-in-"))
    try:
        d.chmod(0o755)
        rdev = os.stat("/dev/kvm").st_rdev
        try:
            os.mknod(d / "kvm", 0o020666, rdev)
        except OSError as exc:
            pytest.skip(f"cannot make a KVM node here: {exc}")
        (d / "kvm").chmod(0o666)
        (d / "bin").mkdir(mode=0o755)
        (d / "out").mkdir(mode=0o777)
        (d / "out").chmod(0o777)
        script = d / "bin" / "firecracker"
        script.write_text(STAND_IN.replace("@OUT@", str(d / "out")))
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{d / 'bin'}:{os.environ['PATH']}")
        yield d / "kvm", d / "out"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _check_config(cfg: dict[str, object]) -> None:
    """The config Firecracker was handed, against its documented shapes (fixtures/firecracker-api.json)."""
    spec = FC_FIXTURE["config_file"]
    assert set(cfg) <= set(spec["FullVmConfiguration"])
    defs = spec["definitions"]
    types = {"string": str, "boolean": bool, "integer": int}
    for section, name in (("boot-source", "BootSource"), ("machine-config", "MachineConfiguration")):
        part = cfg[section]
        assert isinstance(part, dict) and set(part) <= set(defs[name]["properties"])
        assert set(defs[name]["required"]) <= set(part)
        for k, v in part.items():
            assert isinstance(v, types[defs[name]["properties"][k]]), (k, v)
    [drive] = cfg["drives"]  # type: ignore[misc]
    assert set(defs["Drive"]["required"]) | set(defs["Drive"]["required_for_virtio_block"]) <= set(drive)
    assert drive["is_read_only"] is True and drive["is_root_device"] is False
    boot = cfg["boot-source"]
    assert isinstance(boot, dict)
    args = boot["boot_args"].split()
    # Firecracker's documented arguments, then the image's /init; none of TCG's clock settings.
    assert args[:4] == FC_FIXTURE["boot_args"]["recommended"].split() and "rdinit=/init" in args
    assert not any(a.startswith(("tsc", "lpj", "no_timer_check")) for a in args)
    for key in ("kernel_image_path", "initrd_path"):
        assert boot[key].startswith("/dev/fd/")
    assert drive["path_on_host"].startswith("/dev/fd/")
    mc = cfg["machine-config"]
    assert isinstance(mc, dict) and mc["smt"] is False and mc["vcpu_count"] >= 1


@pytest.mark.slow
def test_firecracker_chosen_when_it_works_and_a_failed_smoke_falls_back(
    vm_config: SandboxConfig, stand_in: tuple[Path, Path], tmp_path: Path
) -> None:
    """With a binary (the stand-in), a passing KVM probe as the sandbox uid and a Firecracker smoke
    record, jobs go to Firecracker: the backend hands it the unpacked vmlinux and a config of the
    documented shape. A failing Firecracker smoke boot (the stand-in cannot boot) falls back to
    QEMU, which then boots for real."""
    node, out = stand_in
    real = MicroVMBackend(vm_config)
    d = tmp_path / "microvm"
    d.mkdir()
    for p in (real.kernel, real.initramfs, real.rootfs, real.modules_dir, real.manifest_file):
        (d / p.name).symlink_to(p)
    cfg = fresh_config(backend="microvm", image_dir=tmp_path)
    vm = MicroVMBackend(cfg, kvm_device=node)
    firecracker = vm.candidates()[0]
    assert isinstance(firecracker, fc.FirecrackerVMM) and firecracker.binary == Path(
        shutil.which("firecracker") or ""
    )
    ok, why = vm.precheck(firecracker)
    assert not ok and "vmlinux" in why  # binary, version and probe pass; the ELF kernel is missing
    log: list[str] = []
    vm.image._vmlinux(log)  # what build-image does when a Firecracker binary is found
    assert fc.is_elf(vm.vmlinux) and "vmlinux" in log[0]
    ok, why = MicroVMBackend(cfg, kvm_device=node).precheck(firecracker)
    assert ok and "Firecracker 1.13.1" in why and "smoke boot decides" in why

    # binary + probe + smoke say yes: Firecracker runs the jobs.
    _write_smoke(vm, {"firecracker": {"vmm": "firecracker", "ok": True, "seconds": 0.9}})
    vm = MicroVMBackend(cfg, kvm_device=node)
    assert vm.vmm is not None and vm.vmm.name == "firecracker" and vm.compile_timeout_factor == 1.0
    assert vm.available() == (True, f"Firecracker (KVM); languages: {', '.join(vm.image_languages)}")
    with pytest.raises(SandboxError, match="did not start the job"):
        vm.run_job(["sh", "-c", "echo hi"], Limits(10_000, 64, 1, 4096, 16, 1), {})
    argv = (out / "argv").read_text().split()
    assert argv[:2] == ["--no-api", "--config-file"] and argv[2].startswith("/dev/fd/")
    config = json.loads((out / "config.json").read_text())
    _check_config(config)
    assert config["machine-config"]["mem_size_mib"] == 64 + 128  # the step's memory + the guest's
    assert (out / "kernel-magic").read_text().strip() == "177ELF"  # the vmlinux, not the bzImage

    # The smoke boot: Firecracker (the stand-in) fails, so does QEMU+KVM (QEMU cannot open the real,
    # root-only /dev/kvm as the sandbox uid), and QEMU/TCG boots and becomes the VMM.
    t0 = time.monotonic()
    smoke = vm.smoke()
    records = smoke["vmms"]
    assert isinstance(records, dict) and list(records) == ["firecracker", "qemu-kvm", "qemu-tcg"], smoke
    assert not records["firecracker"]["ok"] and "did not start" in records["firecracker"]["error"]
    assert not records["qemu-kvm"]["ok"]
    assert records["qemu-tcg"]["ok"] and smoke["vmm"] == "qemu-tcg" and smoke["ok"]
    after = MicroVMBackend(cfg, kvm_device=node)
    assert after.vmm is not None and after.vmm.name == "qemu-tcg"
    assert after.compile_timeout_factor == TCG_COMPILE_FACTOR
    reasons = {n: why for n, _, why in after.choose().considered}
    assert "failed its smoke boot" in reasons["firecracker"]
    print(f"smoke with fallback: {time.monotonic() - t0:.1f} s; {records}")


@pytest.mark.slow
def test_a_job_runs_under_firecracker_where_it_can(vm_config: SandboxConfig, tmp_path: Path) -> None:
    """Where a Firecracker binary and a KVM the sandbox uid can open exist: the smoke boot under
    Firecracker, then a job. Skipped on this project's nodes (no binary; nested KVM hangs)."""
    cfg = fresh_config(backend="microvm", image_dir=tmp_path, vmm="firecracker")
    vm = MicroVMBackend(cfg)
    firecracker = vm.candidates()[0]
    assert isinstance(firecracker, fc.FirecrackerVMM)
    if firecracker.binary is None:
        pytest.skip("no firecracker binary on PATH (none is packaged for Debian or PyPI)")
    ok, why = firecracker.available(kvm=vm.kvm_probe())
    if not ok:
        pytest.skip(f"Firecracker cannot run here: {why}")
    real = MicroVMBackend(vm_config)
    d = tmp_path / "microvm"
    d.mkdir()
    for p in (real.kernel, real.initramfs, real.rootfs, real.modules_dir, real.manifest_file):
        (d / p.name).symlink_to(p)
    vm.image._vmlinux([])
    smoke = vm.smoke()
    assert smoke["ok"] and smoke["vmm"] == "firecracker", smoke
    res = MicroVMBackend(cfg).run_job(
        ["python3", "-c", "print(6 * 7)"], Limits(10_000, 128, 1, 4096, 16, 1), {}
    )
    assert res.stdout == b"42\n" and res.exit_code == 0
