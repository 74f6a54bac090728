"""Python sandboxes run a zygote (pre-started when pooled): the same behaviour as a plain run.

Each case runs plain (/bin/sh -> python3 -u main.py), cold and warm, and compares what the user sees: output, exit status, tracebacks,
argv, stdin, environment, limits. The security properties are the same sandbox's (namespaces,
seccomp, cgroup): the security suite's warm-pool test and these cover the zygote's own steps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from argosy.sandbox.models import ExecRequest
from argosy.sandbox.service import LocalRunner, wait_for
from argosy.sandbox.zygote import python_argv

from .conftest import BWRAP, fresh_config

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not installed")


@pytest.fixture(scope="module")
def trio() -> Iterator[tuple[LocalRunner, LocalRunner, LocalRunner]]:
    plain = LocalRunner(fresh_config(zygote=False))  # the reference: /bin/sh -> python3 -u main.py
    cold = LocalRunner(fresh_config())  # a zygote started for the request
    warm = LocalRunner(fresh_config(pool={"python": 1}))  # a pooled zygote
    warm.start_background()
    yield plain, cold, warm
    for r in (plain, cold, warm):
        r.close()
        shutil.rmtree(r.config.base_dir, ignore_errors=True)


CASES = {
    "argv-and-path": (
        "import sys, os\nprint(sys.argv, sys.path[0], __file__, __name__, os.getcwd())",
        {"args": ["a", "b c"]},
    ),
    "stdin": ("import sys\nprint(sys.stdin.read().upper())", {"stdin": "hello"}),
    "no-stdin": ("import sys\nprint(repr(sys.stdin.read()))", {}),
    "exit-code": ("import sys\nprint('bye')\nsys.exit(3)", {}),
    "traceback": ("def f():\n    raise ValueError('boom')\nf()", {}),
    "syntax-error": ("x = (\n", {}),
    "env": ("import os\nprint(sorted(k for k in os.environ if not k.startswith('_')))", {}),
    "rlimits": (
        "import resource as r\nprint(r.getrlimit(r.RLIMIT_NOFILE), r.getrlimit(r.RLIMIT_CORE))\n"
        "try:\n    r.setrlimit(r.RLIMIT_NOFILE, (4096, 4096))\nexcept (ValueError, OSError):\n    print('cannot raise')",
        {},
    ),
    "open-fds": ("import os\nprint(sorted(os.listdir('/proc/self/fd')))", {}),
    "sibling-import": ("import helper\nprint(helper.X)", {"files": {"helper.py": "X = 42\n"}}),
    "unbuffered": ("import sys\nprint('out')\nprint('err', file=sys.stderr)\nraise SystemExit('fatal')", {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_zygotes_match_a_plain_run(trio: tuple[LocalRunner, LocalRunner, LocalRunner], name: str) -> None:
    plain, cold, warm = trio
    code, extra = CASES[name]
    files = dict(extra.get("files", {}))  # type: ignore[call-overload]
    kw = {k: v for k, v in extra.items() if k != "files"}
    if files:
        req = ExecRequest(language="python", files={"main.py": code, **files}, **kw)  # type: ignore[arg-type]
    else:
        req = ExecRequest(language="python", code=code, **kw)  # type: ignore[arg-type]
    a = plain.execute(req)
    assert wait_for(warm.pool.filled, 30)
    c, w = cold.execute(req), warm.execute(req)
    assert not c.warm and w.warm
    for other in (c, w):
        assert (other.stdout, other.stderr, other.exit_code, other.status) == (
            a.stdout,
            a.stderr,
            a.exit_code,
            a.status,
        ), other.model_dump()


def test_limits_and_timeouts_hold_in_a_zygote(trio: tuple[LocalRunner, LocalRunner, LocalRunner]) -> None:
    _, _, warm = trio
    assert wait_for(warm.pool.filled, 30)
    res = warm.execute(ExecRequest(language="python", code="while True: pass", timeout_ms=300))
    assert res.warm and res.timed_out
    if warm.backend.cgroups.version != "none":
        assert wait_for(warm.pool.filled, 30)
        res = warm.execute(ExecRequest(language="python", code="x = bytearray(400 * 2**20)", memory_mb=64))
        assert res.warm and res.oom_killed


def test_zygote_only_stands_in_for_plain_python() -> None:
    assert python_argv(["python3", "-u", "{file}"], "{file}") == (
        ["python3", "-u", "/run/argosy/zygote.py", "{go_fd}", "{ready_fd}"],
        2,
    )
    assert python_argv(["python3", "-X", "dev", "{file}"], "{file}") is None
    assert python_argv(["node", "{file}"], "{file}") is None


def test_zygote_can_be_turned_off() -> None:
    r = LocalRunner(fresh_config(pool={"python": 1}, zygote=False))
    try:
        assert r.pool.zygotes == {} and r.zygotes == {}
    finally:
        r.close()


def test_sessions_do_not_use_the_zygote(trio: tuple[LocalRunner, LocalRunner, LocalRunner]) -> None:
    """A session's files exist before the interpreter starts: a usercustomize there must run under
    the run's limits (plain path: prlimit before python), not before a zygote sets them."""
    from argosy.sandbox.models import SessionCreate, SessionExec

    _, cold, _ = trio
    sid = cold.create_session(SessionCreate(ttl_s=60)).id
    try:
        site = cold.exec_session(sid, SessionExec(code="import site; print(site.getusersitepackages())"))
        rel = site.stdout.strip().removeprefix("/work/")
        probe = "import resource as r\nprint('startup', r.getrlimit(r.RLIMIT_NOFILE))\n"
        cold.put_file(sid, f"{rel}/usercustomize.py", probe.encode())
        res = cold.exec_session(sid, SessionExec(code="pass"))
        assert res.stdout == "startup (1024, 1024)\n", res.stdout + res.stderr
    finally:
        cold.delete_session(sid)
