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
zygote imported (json, resource, traceback, types), and the run's reported duration excludes the
interpreter's start.
"""

from __future__ import annotations

SCRIPT_NAME = "zygote.py"

# The script the sandbox runs (kept dependency-free: it runs on the sandbox's own python3).
SOURCE = r"""
import os, sys
import builtins, json, resource, traceback, types
_go, _ready = int(sys.argv[1]), int(sys.argv[2])
os.write(_ready, b"1")  # started and imported: the pool counts this sandbox as ready
os.close(_ready)
if not os.read(_go, 1):  # EOF: the agent closed the sandbox without a request
    os._exit(0)
os.close(_go)
with open("/run/argosy/run.json") as _f:
    _req = json.load(_f)
for _name, _value in _req["rlimits"]:
    resource.setrlimit(getattr(resource, "RLIMIT_" + _name.upper()), (_value, _value))
os.environ.clear()
os.environ.update(_req["env"])
_fd = os.open(_req["stdin"], os.O_RDONLY)
os.dup2(_fd, 0)
os.close(_fd)
_script = os.path.join("/work", _req["argv"][0])
sys.argv = list(_req["argv"])
sys.path[0] = os.path.dirname(_script)
del _f, _req, _name, _value, _fd, _go, _ready
_main = types.ModuleType("__main__")
_main.__file__ = _script
_main.__builtins__ = builtins
_main.__cached__ = None
sys.modules["__main__"] = _main
try:
    with open(_script, "rb") as _f:
        _code = compile(_f.read(), _script, "exec")
    del _f
    exec(_code, _main.__dict__)
except SystemExit:
    raise
except BaseException as _e:
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
