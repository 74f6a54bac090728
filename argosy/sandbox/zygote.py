"""A pre-started interpreter for pooled sandboxes: Python's start-up is paid before the request.

A warm sandbox for Python normally waits, blocked, before `/bin/sh cmd.sh` -> `python3 -u main.py`;
the request then pays for two execs and the interpreter's start (most of a bare `python3 -c`).
With a zygote, the pooled sandbox is unblocked at once and runs `python3 -u zygote.py FD`: the
interpreter starts, imports its site packages, and waits on FD. A request writes `run.json` into
the sandbox's read-only control dir and one byte to FD; the zygote then, in this order, lowers its
own rlimits (soft = hard: the code cannot raise them), replaces its environment, points stdin at
the request's input, closes FD and runs the user's file as a fresh `__main__` (as `python3 -u main.py ARGS`
would: same sys.argv, sys.path[0], __file__, exit status, and tracebacks without the zygote's
frames).

Isolation stays per run: one zygote per sandbox, used once, then the sandbox is destroyed. Every
wall (namespaces, seccomp, no_new_privs, dropped caps, cgroup) is in place before the zygote's first
instruction; what it adds before the request is only the interpreter's own start-up, under the
pool's placeholder limits. What differs from a cold run: sys.modules also holds the few modules the
zygote imported (resource), and the run's reported duration excludes the
interpreter's start.
"""

from __future__ import annotations

import os

SCRIPT_NAME = "zygote.py"

# The script the sandbox runs (kept dependency-free: it runs on the sandbox's own python3).
SOURCE = r"""
import os, sys, resource
_go, _ready = int(sys.argv[1]), int(sys.argv[2])
os.write(_ready, b"1")  # started: the pool counts this sandbox as ready
os.close(_ready)
if not os.read(_go, 1):  # EOF: the agent closed the sandbox without a request
    os._exit(0)
os.close(_go)
# The request (encode_request): a header "N M K", then NUL-separated argv, env, rlimits, stdin.
with open("/run/argosy/run.req", "rb") as _f:
    _head, _rest = _f.read().split(b"\n", 1)
_n, _m, _k = map(int, _head.split())
_parts = [os.fsdecode(_p) for _p in _rest.split(b"\0")]
for _item in _parts[_n + _m : _n + _m + _k]:
    _name, _value = _item.split("=")
    resource.setrlimit(getattr(resource, "RLIMIT_" + _name.upper()), (int(_value), int(_value)))
os.environ.clear()
for _item in _parts[_n : _n + _m]:
    _name, _value = _item.split("=", 1)
    os.environ[_name] = _value
_fd = os.open(_parts[_n + _m + _k], os.O_RDONLY)
os.dup2(_fd, 0)
os.close(_fd)
_script = "/work/" + _parts[0]
sys.argv = _parts[:_n]
sys.path[0] = os.path.dirname(_script)
_main = type(sys)("__main__")
_main.__file__ = _script
_main.__builtins__ = __builtins__
_main.__cached__ = None
sys.modules["__main__"] = _main
del _f, _head, _rest, _n, _m, _k, _parts, _item, _name, _value, _fd, _go, _ready
try:
    with open(_script, "rb") as _f:
        _code = compile(_f.read(), _script, "exec")
    del _f
    exec(_code, _main.__dict__)
except SystemExit:
    raise
except BaseException as _e:
    import traceback  # only when needed: every import here is start-up time

    _tb = _e.__traceback__
    while _tb is not None and _tb.tb_frame.f_code.co_filename != _script:
        _tb = _tb.tb_next
    traceback.print_exception(type(_e), _e, _tb)
    sys.stderr.flush()
    os._exit(1)
"""


def python_argv(run_argv: list[str], file: str) -> tuple[list[str], int] | None:
    """For a language run as `python3 [-u] FILE`: the zygote's argv (fds to fill in) and how
    many leading items of a request's argv it replaces. None when a zygote cannot stand in."""
    if not run_argv or run_argv[0] not in ("python3", "python") or run_argv[-1] != file:
        return None
    if any(a != "-u" for a in run_argv[1:-1]):
        return None  # other interpreter flags would change semantics the zygote does not replicate
    return [run_argv[0], "-u", f"/run/argosy/{SCRIPT_NAME}", "{go_fd}", "{ready_fd}"], len(run_argv) - 1


def encode_request(argv: list[str], env: dict[str, str], rlimits: list[tuple[str, int]], stdin: str) -> bytes:
    """The request file the zygote reads (not JSON: importing json is start-up time in the sandbox)."""
    items = [*argv, *(f"{k}={v}" for k, v in env.items()), *(f"{n}={v}" for n, v in rlimits), stdin]
    if any("\0" in item for item in items):
        raise ValueError("a NUL byte in an argument or environment value")
    head = f"{len(argv)} {len(env)} {len(rlimits)}\n".encode()
    return head + b"\0".join(os.fsencode(i) for i in items)
