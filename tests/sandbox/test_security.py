"""The escape suite from issue 7: every attempt must be contained and reported correctly.

Real sandboxes, real attacks. No timed assertions: the kill latency is measured in bench/sandbox.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator

import psutil
import pytest

from argosy.sandbox.models import ExecRequest, SessionCreate, SessionExec
from argosy.sandbox.service import LocalRunner

from .conftest import is_root


def py(runner: LocalRunner, code: str, **kw: object) -> object:
    return runner.execute(ExecRequest(language="python", code=code, **kw))  # type: ignore[arg-type]


# -- host secrets -----------------------------------------------------------------------------------


def test_cannot_read_etc_shadow(runner: LocalRunner) -> None:
    res = py(runner, "print(open('/etc/shadow').read())")
    assert res.exit_code != 0
    assert "PermissionError" in res.stderr or "FileNotFoundError" in res.stderr
    assert "root:" not in res.stdout


def test_server_home_and_database_are_not_visible(runner: LocalRunner, home: object) -> None:
    # The server keeps its database under ARGOSY_HOME (a home dir or /var/lib): none of it is bound in.
    code = (
        "import os\n"
        "for p in ['/root', '/home', '/var', '/srv', '/dev/shm', os.environ.get('ARGOSY_HOME', '/nonexistent')]:\n"
        "    print(p, os.path.exists(p) and os.listdir(p))\n"
    )
    res = py(runner, code)
    assert res.exit_code == 0, res.stderr
    for line in res.stdout.splitlines():
        path, _, listing = line.partition(" ")
        assert listing in ("False", "[]"), f"{path} is visible in the sandbox: {listing}"


def test_agent_environment_is_not_inherited(runner: LocalRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ARGOSY_TEST_SECRET", secret)
    code = (
        "import os, glob\n"
        "print(dict(os.environ))\n"
        "for f in glob.glob('/proc/*/environ'):\n"
        "    try: print(open(f, 'rb').read())\n"
        "    except OSError as e: print(f, e)\n"
    )
    res = py(runner, code)
    assert res.exit_code == 0, res.stderr
    assert secret not in res.stdout


def test_host_processes_are_invisible(runner: LocalRunner) -> None:
    res = py(runner, "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    pids = eval(res.stdout)  # noqa: S307 - our own output: a list of ints
    assert os.getpid() not in pids or os.getpid() <= 3
    assert len(pids) <= 3  # bwrap's init, the code, and nothing of the host's


def test_other_runs_files_are_invisible(runner: LocalRunner) -> None:
    a = runner.create_session(SessionCreate(ttl_s=60))
    b = runner.create_session(SessionCreate(ttl_s=60))
    marker = uuid.uuid4().hex
    runner.put_file(a.id, "secret.txt", marker.encode())
    code = (
        "import os\n"
        f"print(os.listdir('/work'), os.path.exists('{runner.config.base_dir}'))\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    if root.startswith(('/proc', '/sys', '/usr', '/etc')): continue\n"
        "    for f in files:\n"
        "        if f == 'secret.txt': print('FOUND', root)\n"
    )
    res = runner.exec_session(b.id, SessionExec(code=code))
    assert res.exit_code == 0, res.stderr
    assert "FOUND" not in res.stdout
    assert "False" in res.stdout
    runner.delete_session(a.id)
    runner.delete_session(b.id)


# -- writing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/usr/evil", "/etc/evil", "/evil", "/run/argosy/cmd.sh", "/proc/sys/kernel/hostname"]
)
def test_cannot_write_outside_work_dir(runner: LocalRunner, path: str) -> None:
    res = py(runner, f"open('{path}', 'w').write('x')")
    assert res.exit_code != 0
    assert "Error" in res.stderr
    assert not os.path.exists(path) or path.startswith(("/run", "/proc"))


def test_tmp_is_private_and_capped(runner: LocalRunner) -> None:
    marker = f"/tmp/argosy-sbx-{uuid.uuid4().hex}"
    res = py(runner, f"open('{marker}', 'w').write('x'); print('ok')")
    assert res.stdout.strip() == "ok"
    assert not os.path.exists(marker)  # the sandbox's /tmp is its own tmpfs
    res = py(runner, "open('/tmp/big', 'wb').write(b'x' * (600 * 2**20))", memory_mb=1024)
    assert res.exit_code != 0  # ENOSPC (tmpfs size) or EFBIG (file size rlimit), not the node's disk


# -- network ----------------------------------------------------------------------------------------


@pytest.fixture
def loopback_server() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"hello from the host\n")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port
    stop.set()
    t.join()
    srv.close()


NET_CODE = (
    "import socket\n"
    "try:\n"
    "    s = socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED', s.recv(100))\n"
    "except OSError as e:\n"
    "    print('REFUSED', e)\n"
)


def test_network_is_off_by_default(runner: LocalRunner, loopback_server: int) -> None:
    res = py(runner, NET_CODE.format(port=loopback_server))
    assert "REFUSED" in res.stdout, res.stdout + res.stderr


def test_network_when_asked(runner: LocalRunner, loopback_server: int) -> None:
    res = py(runner, NET_CODE.format(port=loopback_server), network=True)
    assert "CONNECTED" in res.stdout, res.stdout + res.stderr


# -- resource exhaustion ----------------------------------------------------------------------------


def _sandbox_procs(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_fork_bomb_is_contained(runner: LocalRunner) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    res = runner.execute(
        ExecRequest(
            language="bash",
            code="bomb() { bomb | bomb & }; bomb; sleep 2; echo survived",
            timeout_ms=4000,
            args=[marker],
        )
    )
    # Contained: the run ends (by its deadline or its own failures) and nothing is left behind.
    assert res.status in ("timed_out", "ok", "error")
    assert not _sandbox_procs(marker)
    host_after = py(runner, "print(1)")
    assert host_after.stdout == "1\n"  # the node still starts sandboxes


def test_memory_hog_is_oom_killed(runner: LocalRunner) -> None:
    if runner.backend.cgroups.version == "none":
        res = py(runner, "x = bytearray(900 * 2**20)", memory_mb=128)
        assert res.exit_code != 0 and "MemoryError" in res.stderr  # the rlimit floor
        return
    res = py(runner, "x = bytearray(900 * 2**20); print('allocated')", memory_mb=128)
    assert res.oom_killed
    assert res.status == "oom_killed"
    assert res.signal == 9
    assert "allocated" not in res.stdout


def test_cpu_spin_is_timed_out(runner: LocalRunner) -> None:
    res = py(runner, "while True: pass", timeout_ms=500)
    assert res.timed_out and res.status == "timed_out"
    assert res.signal == 9 and res.exit_code is None


def test_output_flood_is_truncated_and_agent_memory_stays_flat(runner: LocalRunner) -> None:
    me = psutil.Process()
    before = me.memory_info().rss
    res = py(
        runner,
        "import sys\nwhile True: sys.stdout.write('A' * 65536)",
        max_output_bytes=100_000,
        timeout_ms=5000,
    )
    grown = me.memory_info().rss - before
    assert res.truncated and res.status == "output_limit"
    assert len(res.stdout.encode()) <= 100_000
    assert grown < 32 * 2**20


def test_waiting_on_stdin_does_not_hang(runner: LocalRunner) -> None:
    res = py(runner, "print(input())", timeout_ms=5000)
    assert not res.timed_out
    assert "EOFError" in res.stderr
    res = py(runner, "import sys; print(sys.stdin.read().upper())", stdin="given input")
    assert res.stdout == "GIVEN INPUT\n"


def test_sleeping_children_do_not_outlive_the_run(runner: LocalRunner) -> None:
    marker = str(900000 + int(uuid.uuid4().int % 99999))
    code = (
        "import os, subprocess\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n"
        "print('parent exits')\n"
    )
    res = py(runner, code)
    assert res.stdout == "parent exits\n", res.stderr
    left = _sandbox_procs(f"sleep {marker}")
    assert not left, f"survivors: {[p.pid for p in left]}"


# -- privilege and kernel surface -------------------------------------------------------------------


def test_symlink_and_proc_tricks(runner: LocalRunner) -> None:
    s = runner.create_session(SessionCreate(ttl_s=60))
    res = runner.exec_session(
        s.id,
        SessionExec(
            command=[
                "sh",
                "-c",
                "ln -s /etc/shadow shadow; ln -s / root; mkfifo fifo; cat /proc/1/root/etc/shadow",
            ]
        ),
    )
    assert res.exit_code != 0  # /proc/1 is bwrap's init in the sandbox, its root the sandbox's root
    from argosy.sandbox.errors import SandboxError

    for path in ("shadow", "root/etc/passwd", "fifo"):
        with pytest.raises(SandboxError):
            runner.get_file(s.id, path)
    with pytest.raises(SandboxError):
        runner.put_file(s.id, "root/tmp/planted", b"x")  # would follow the link to the host's /
    runner.delete_session(s.id)


def test_ptrace_is_refused(runner: LocalRunner) -> None:
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "PTRACE_ATTACH = 16\n"
        "print(libc.ptrace(PTRACE_ATTACH, 1, 0, 0), ctypes.get_errno())\n"
    )
    res = py(runner, code)
    assert res.stdout.split() == ["-1", "1"], res.stdout + res.stderr  # EPERM


def test_mounting_and_new_namespaces_are_refused(runner: LocalRunner) -> None:
    res = runner.execute(
        ExecRequest(
            language="bash",
            code="mkdir -p /tmp/m; mount -t tmpfs none /tmp/m && echo MOUNTED; unshare -r true && echo UNSHARED; "
            "unshare -m true && echo UNSHARED_M; echo done",
        )
    )
    assert "MOUNTED" not in res.stdout and "UNSHARED" not in res.stdout
    assert res.stdout.strip().endswith("done")


def test_cannot_change_uid_and_has_no_privileges(runner: LocalRunner) -> None:
    code = (
        "import os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "print(os.getuid(), os.getgid(), status['CapEff'].strip(), status['CapBnd'].strip(), status['NoNewPrivs'].strip(), status['Seccomp'].strip())\n"
        "for f in (os.setuid, os.setgid):\n"
        "    try: f(0); print('CHANGED')\n"
        "    except OSError as e: print('refused', e.errno)\n"
    )
    res = py(runner, code)
    lines = res.stdout.splitlines()
    uid, gid, cap_eff, cap_bnd, nnp, seccomp_mode = lines[0].split()
    assert (uid, gid) == ("65534", "65534")
    assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0
    assert nnp == "1" and seccomp_mode == "2"
    assert all(line.startswith("refused") for line in lines[1:]) and len(lines) == 3, res.stdout + res.stderr
    res = runner.execute(ExecRequest(language="bash", code="su -c id root </dev/null; sudo -n id; echo end"))
    assert "uid=0" not in res.stdout


def test_host_uid_is_not_root(runner: LocalRunner) -> None:
    if not is_root():
        pytest.skip("as a non-root agent the sandbox runs as the agent's own uid")
    marker = f"uid-probe-{uuid.uuid4().hex}"
    # Exec'd with the marker in its command line, so the host can find it (a zygote's argv is not).
    inner = "import time; print('up', flush=True); time.sleep(3)"
    code = f"import os, sys; os.execv(sys.executable, [sys.executable, '-c', {inner!r}, {marker!r}])"
    seen: list[int] = []

    def watch() -> None:
        for _ in range(200):
            for p in _sandbox_procs(marker):
                with contextlib.suppress(psutil.Error):
                    seen.append(p.uids().real)
            if seen:
                return
            threading.Event().wait(0.02)

    t = threading.Thread(target=watch)
    t.start()
    py(runner, code)
    t.join()
    assert seen and set(seen) == {runner.config.uid}


@pytest.mark.parametrize(
    "name,nr", [("io_uring_setup", 425), ("bpf", 321), ("keyctl", 250), ("perf_event_open", 298)]
)
def test_seccomp_denies_kernel_surface(runner: LocalRunner, name: str, nr: int) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("syscall numbers below are x86_64's")
    code = f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.syscall({nr}, 0, 0, 0, 0, 0), ctypes.get_errno())\n"
    res = py(runner, code)
    assert res.stdout.split() == ["-1", "1"], f"{name}: {res.stdout} {res.stderr}"


# -- the rlimit floor (a node without usable cgroups) ------------------------------------------------


@pytest.fixture(scope="module")
def floor_runner() -> Iterator[LocalRunner]:
    from argosy.sandbox import cgroups

    from .conftest import BWRAP, fresh_config

    if BWRAP is None:
        pytest.skip("bubblewrap not installed")
    r = LocalRunner(fresh_config())
    # The same sandbox as on a node with neither cgroup v1 nor v2 controllers: rlimits only.
    r.backend.cgroups = cgroups.CgroupSupport("none", (), "forced off for this test")
    yield r
    r.close()


def test_rlimit_floor_memory(floor_runner: LocalRunner) -> None:
    res = py(floor_runner, "x = bytearray(900 * 2**20); print('allocated')", memory_mb=128)
    assert res.exit_code != 0 and "MemoryError" in res.stderr and "allocated" not in res.stdout
    ok = py(floor_runner, "x = bytearray(32 * 2**20); print('fine')", memory_mb=128)
    assert ok.stdout == "fine\n", ok.stderr


def test_rlimit_floor_fork_bomb_and_timeout(floor_runner: LocalRunner) -> None:
    code = "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time; time.sleep(5); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('stopped at', n, e.errno)\n"
    res = py(floor_runner, code, timeout_ms=5000)
    assert res.stdout.startswith("stopped at"), res.stdout + res.stderr
    assert int(res.stdout.split()[2]) <= 64
    res = py(floor_runner, "while True: pass", timeout_ms=300)
    assert res.timed_out


def test_rlimit_floor_runs_every_runtime(floor_runner: LocalRunner, table: object) -> None:
    for lang, code in (
        ("node", "console.log(1)"),
        ("ruby", "puts 1"),
        ("java", "public class Main { public static void main(String[] a) { System.out.println(1); } }"),
    ):
        if floor_runner.table.get(lang).toolchain_path() is None:
            continue
        res = floor_runner.execute(ExecRequest(language=lang, code=code, timeout_ms=30000))
        assert res.stdout.strip() == "1", f"{lang}: {res.stderr}"


# -- rlimits: set from the agent (prlimit(2)) where it may, from inside (prlimit(1)) otherwise -----

RLIMIT_PROBE = (
    "import resource as r\n"
    "print(r.getrlimit(r.RLIMIT_NOFILE), r.getrlimit(r.RLIMIT_CORE), r.getrlimit(r.RLIMIT_CPU)[0] > 0)\n"
    "try:\n    r.setrlimit(r.RLIMIT_NOFILE, (4096, 4096)); print('raised')\n"
    "except (ValueError, OSError): print('cannot raise')\n"
)


@pytest.mark.parametrize("direct", [True, False], ids=["auto", "prlimit1"])
def test_rlimits_hold_either_way(direct: bool) -> None:
    """`auto` uses prlimit(2) where the agent may (same uid, or CAP_SYS_RESOURCE), else falls back."""
    from .conftest import BWRAP, fresh_config

    if BWRAP is None:
        pytest.skip("bubblewrap not installed")
    r = LocalRunner(fresh_config())
    try:
        if not direct:
            r.backend._direct_rlimits = False  # as on a node where prlimit(2) is refused
        res = py(r, RLIMIT_PROBE)
        assert res.stdout == "(1024, 1024) (0, 0) True\ncannot raise\n", res.stdout + res.stderr
    finally:
        r.close()
