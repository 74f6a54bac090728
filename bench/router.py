"""Router benchmark: Argosy's router vs nginx and a plain aiohttp proxy, measured in one run.

    python bench/router.py                              # 3 interleaved rounds, medians (~6 minutes)
    python bench/router.py --duration 3 --rounds 5      # shorter phases, more rounds
    python bench/router.py --proxies nginx,argosy --memory-requests 1000000   # the 1e6-request memory check
    python bench/router.py --baseline /tmp/old          # also an older checkout's router, same run

It starts a static backend (nginx `return 200`), two SSE backends (uvloop, 256 events per response,
one write per event: back to back, or interleaved one event per stream per loop turn), nginx as the
reference proxy (keep-alive upstream, no buffering), `pyfloor` (a bare uvloop byte pipe: the floor any
Python proxy pays here), a plain aiohttp proxy and `argosy router`. Every proxy runs pinned to CPU 0
for the whole run; wrk and the backends share the other CPUs. Phases are interleaved over rounds and
medians reported, with the load average (the machine may be shared). The c=1 phase runs twice: with
the proxy on its own CPU (`c1`), and moved onto the CPU of wrk and the backend (`c1s`). On a VM whose
idle vCPUs halt, waking another vCPU costs ~100 us each way, which every proxy pays twice per request
in `c1` (nginx included) and none pays in `c1s`: the difference separates the machine's cost of a
cross-CPU hop from the proxy's own added latency. It prints requests/s, p50/p99
latency, proxy CPU microseconds per request, relayed SSE chunks/s and chunks per proxy CPU-second (what
one proxy core can relay, independent of how fast the backend and wrk are), and ratios to nginx. nginx
and wrk are installed from Debian if missing.

This is a benchmark, not a test: numbers depend on the machine; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNKS = 256
COMPLETION = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello " * 20}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    }
)
REQUEST_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        print(f"installing {' '.join(missing)} from Debian ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, stdout=subprocess.DEVNULL)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _tree(pid: int) -> dict[int, list[str]]:
    """A process and its descendants (nginx's worker, taskset's child): pid -> its /proc stat fields."""
    procs = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = _stat(int(d.name))
            except OSError:
                continue
            procs.append((int(d.name), int(f[1]), f))
    tree = {p: f for p, _, f in procs if p == pid}
    changed = True
    while changed:
        changed = False
        for p, ppid, f in procs:
            if ppid in tree and p not in tree:
                tree[p] = f
                changed = True
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, from /proc."""
    total = sum(int(f[11]) + int(f[12]) for f in _tree(pid).values())
    return total / os.sysconf("SC_CLK_TCK")


def pin_tree(pid: int, cpus: str) -> None:
    """Move every thread of a process and its descendants to `cpus` ("1" or "1-3")."""
    lo, _, hi = cpus.partition("-")
    mask = set(range(int(lo), int(hi or lo) + 1))
    for p in _tree(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), mask)


def rss_kb(pid: int) -> int:
    # taskset execs the proxy in place, so the pid is the proxy itself.
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- helper processes (run as subcommands)
def sse_backend(port: int) -> None:
    import uvloop

    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    events = []
    for i in range(CHUNKS):
        ev = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "bench",
                         "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]})  # fmt: skip
        data = b"data: " + ev.encode() + b"\n\n"
        events.append(b"%x\r\n%s\r\n" % (len(data), data))
    done = b"data: [DONE]\n\n"
    tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)

    class P(asyncio.Protocol):
        def connection_made(self, t: Any) -> None:
            self.t = t
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                headers, _, rest = self.buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", headers)
                n = int(m.group(1)) if m else 0
                if len(rest) < n:
                    return
                self.buf = rest[n:]
                self.t.write(head)
                for e in events:  # one write per event, as an engine emits tokens
                    self.t.write(e)
                self.t.write(tail)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(P, "127.0.0.1", port, backlog=4096)
        await asyncio.Event().wait()

    uvloop.run(main())


def floor_proxy(port: int, backend: str) -> None:
    """The least a Python proxy can do: uvloop, one upstream connection per client connection, bytes
    copied both ways with no HTTP parsing. Not a usable router; it shows what any Python proxy pays on
    this machine (the loop, the syscalls, the wake-ups), so the router's own share can be read off."""
    import uvloop

    host, _, up_port = backend.rpartition("//")[2].partition(":")

    class Up(asyncio.Protocol):
        def __init__(self, client: Any) -> None:
            self.client = client

        def data_received(self, data: bytes) -> None:
            if not self.client.is_closing():
                self.client.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.client.close()

    class Client(asyncio.Protocol):
        def connection_made(self, t: Any) -> None:
            self.t, self.up, self.buf = t, None, []
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self) -> None:
            up, _ = await asyncio.get_running_loop().create_connection(lambda: Up(self.t), host, int(up_port))
            self.up = up
            for b in self.buf:
                up.write(b)

        def data_received(self, data: bytes) -> None:
            if self.up is None:
                self.buf.append(data)
            else:
                self.up.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.up is not None:
                self.up.close()

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port, backlog=4096)
        await asyncio.Event().wait()

    uvloop.run(main())


def aiohttp_proxy(port: int, backend: str) -> None:
    """The plain proxy people write with aiohttp: a ClientSession relaying bytes."""
    import aiohttp
    from aiohttp import web

    hop = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "authorization"}

    async def handler(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with session.request(request.method, backend + request.path_qs, data=await request.read(),
                                   headers=headers) as up:  # fmt: skip
            resp = web.StreamResponse(
                status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in hop}
            )
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    app = web.Application()
    app.on_startup.append(on_startup)
    app.router.add_route("*", "/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- the benchmark
class Procs:
    def __init__(self, logdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = logdir

    def start(self, cmd: list[str], cpus: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        if cpus is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", cpus, *cmd]
        # stderr to a file, never an unread pipe: a chatty proxy would block once the pipe fills.
        log = open(self.logdir / f"proc-{len(self.procs)}.log", "wb")  # noqa: SIM115 - lives as long as the process
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


def nginx_conf(tmp: Path, listen: int, body: str | None, upstream: str | None) -> Path:
    if body is not None:
        loc = f"default_type application/json; return 200 '{body}';"
    else:
        loc = (
            'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
            " proxy_buffering off; proxy_request_buffering off;"
        )
    ups = f"upstream up {{ server {upstream}; keepalive 128; }}" if upstream else ""
    conf = tmp / f"nginx-{listen}.conf"
    conf.write_text(
        f"""worker_processes 1; daemon off; pid {tmp}/nginx-{listen}.pid; error_log {tmp}/nginx-{listen}.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  {ups}
  server {{ listen 127.0.0.1:{listen}; location / {{ {loc} }} }} }}
"""
    )
    return conf


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _dur(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def wrk(url: str, conns: int, duration: float, lua: Path, cpus: str) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(lua), url]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _dur(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _dur(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    if sock:
        print(f"    wrk socket errors: {sock.group(1)}", flush=True)
    return {
        "rps": rps,
        "requests": total,
        "p50": p50,
        "p99": p99,
        "non2xx": int(errors.group(1)) if errors else 0,
    }


def measure(name: str, port: int, pid: int | None, conns: int, duration: float, lua: Path,
            cpus: str) -> dict[str, float]:  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wrk(url, conns, 1.0, lua, cpus)  # warm up pools and caches
    c0 = cpu_seconds(pid) if pid else 0.0
    r = wrk(url, conns, duration, lua, cpus)
    if pid:
        r["cpu_s"] = cpu_seconds(pid) - c0
        r["cpu_us"] = r["cpu_s"] / max(1, r["requests"]) * 1e6
    print(f"  {name:<9} c={conns:<3} {r['rps']:>10.0f} req/s  p50 {r['p50'] * 1e6:>8.0f} us  "
          f"p99 {r['p99'] * 1e6:>8.0f} us" + (f"  cpu {r['cpu_us']:.0f} us/req" if pid else "")
          + (f"  NON-2XX {r['non2xx']}" if r["non2xx"] else ""), flush=True)  # fmt: skip
    return r


def median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x == x)  # wrk prints "-nan" for an empty histogram now and then
    n = len(xs)
    if not n:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def start_proxy(procs: Procs, name: str, port: int, upstream: str, tmp: Path, cpu: str,
                baseline: Path | None) -> subprocess.Popen[bytes]:  # fmt: skip
    if name == "nginx":
        return procs.start([nginx_bin(), "-c", str(nginx_conf(tmp, port, None, upstream))], cpu)
    if name == "pyfloor":
        return procs.start([sys.executable, __file__, "_floor-proxy", str(port), f"http://{upstream}"], cpu)
    if name == "aiohttp":
        return procs.start([sys.executable, __file__, "_aiohttp-proxy", str(port), f"http://{upstream}"], cpu)
    env = {**os.environ, "ARGOSY_LOG_LEVEL": "WARNING"}
    if name == "baseline" and baseline is not None:
        # An older checkout's package (e.g. `git archive REV argosy | tar -x -C DIR`), same run, same machine.
        env["PYTHONPATH"] = str(baseline)
    cmd = [sys.executable, "-m", "argosy", "router", "--policy", "least-outstanding",
           "--listen", f"127.0.0.1:{port}", "--backend", f"http://{upstream}"]  # fmt: skip
    return procs.start(cmd, cpu, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured phase")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument(
        "--proxies",
        default="nginx,pyfloor,aiohttp,argosy",
        help="comma-separated subset (pyfloor: a bare uvloop byte pipe, the floor for any Python proxy)",
    )
    ap.add_argument(
        "--phases",
        default="c1,c1s,c64,sse,ssei",
        help="comma-separated subset of c1,c1s (c=1 with the proxy on the client's CPU),c64,sse,ssei",
    )
    ap.add_argument("--baseline", type=Path, help="directory holding an older `argosy` package to compare")
    ap.add_argument(
        "--memory-requests",
        type=int,
        default=200_000,
        help="requests for the memory-flatness phase (0: skip)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    ensure_tools()
    ncpu = os.cpu_count() or 2
    proxy_cpu, load_cpus = "0", f"1-{ncpu - 1}" if ncpu > 2 else "1"
    tmp = Path(tempfile.mkdtemp(prefix="argosy-bench-"))
    lua = tmp / "post.lua"
    lua.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(REQUEST_BODY)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    names = [n for n in args.proxies.split(",") if n]
    phases = set(args.phases.split(","))
    if args.baseline is not None:
        names.append("baseline")
    procs = Procs(tmp)
    load0 = os.getloadavg()
    results: dict[str, Any] = {"cpus": ncpu, "chunks_per_response": CHUNKS, "rounds": args.rounds,
                               "duration_s": args.duration, "load_before": load0}  # fmt: skip
    try:
        static_port, sse_port, ssei_port = free_port(), free_port(), free_port()
        procs.start(
            [nginx_bin(), "-c", str(nginx_conf(tmp, static_port, COMPLETION.replace("'", ""), None))],
            load_cpus,
        )
        procs.start([sys.executable, __file__, "_sse-backend", str(sse_port)], load_cpus)
        procs.start([sys.executable, __file__, "_sse-backend", str(ssei_port), "interleave"], load_cpus)
        for port in (static_port, sse_port, ssei_port):
            wait_port(port)
        upstreams = [f"127.0.0.1:{p}" for p in (static_port, sse_port, ssei_port)]
        # Every proxy runs for the whole benchmark (idle ones cost nothing) so the rounds can interleave:
        # on a shared machine the load drifts, and interleaving spreads the drift over every proxy.
        running: dict[str, list[tuple[int, subprocess.Popen[bytes]]]] = {}
        for name in names:
            running[name] = []
            for upstream in upstreams:
                port = free_port()
                proc = start_proxy(procs, name, port, upstream, tmp, proxy_cpu, args.baseline)
                running[name].append((port, proc))
        for instances in running.values():
            for port, _ in instances:
                wait_port(port)
        print(f"machine: {ncpu} CPUs, load average {load0[0]:.2f}; proxies pinned to CPU {proxy_cpu}, wrk and "
              f"backends to {load_cpus}; {args.rounds} rounds of {args.duration:g} s phases\n", flush=True)  # fmt: skip
        raw: dict[str, dict[str, list[dict[str, float]]]] = {
            n: {"c1": [], "c1s": [], "c64": [], "sse": [], "ssei": []} for n in names
        }
        raw["direct"] = {"c1": []}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds} (load {os.getloadavg()[0]:.2f}):", flush=True)
            raw["direct"]["c1"].append(measure("direct", static_port, None, 1, args.duration, lua, load_cpus))
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                (p_static, a), (p_sse, b), (p_ssei, c) = running[name]
                for phase, conns in (("c1", 1), ("c64", 64)):
                    if phase in phases:
                        raw[name][phase].append(
                            measure(name, p_static, a.pid, conns, args.duration, lua, load_cpus)
                        )
                if "c1s" in phases:
                    # The same c=1 run with the proxy moved onto wrk's and the backend's CPU: no
                    # cross-vCPU wake-ups, so what remains over direct is the proxy's own work.
                    pin_tree(a.pid, load_cpus)
                    try:
                        raw[name]["c1s"].append(
                            measure(f"{name}@1cpu", p_static, a.pid, 1, args.duration, lua, load_cpus)
                        )
                    finally:
                        pin_tree(a.pid, proxy_cpu)
                for phase, port, pid, conns in (("sse", p_sse, b.pid, 16), ("ssei", p_ssei, c.pid, 64)):
                    if phase not in phases:
                        continue
                    s = measure(name, port, pid, conns, args.duration, lua, load_cpus)
                    s["chunks_per_s"] = s["rps"] * (CHUNKS + 1)
                    s["cpu_us_per_chunk"] = s["cpu_s"] / max(1.0, s["requests"] * (CHUNKS + 1)) * 1e6
                    s["chunks_per_cpu_s"] = s["requests"] * (CHUNKS + 1) / max(1e-9, s["cpu_s"])
                    kind = "bursts" if phase == "sse" else "interleaved"
                    print(f"  {name:<9} SSE ({kind}): {s['chunks_per_s']:,.0f} chunks/s relayed, "
                          f"{s['chunks_per_cpu_s']:,.0f} chunks per proxy CPU-second", flush=True)  # fmt: skip
                    raw[name][phase].append(s)
        results["raw"] = raw
        med: dict[str, dict[str, dict[str, float]]] = {}
        for name, phases in raw.items():
            med[name] = {
                ph: {k: median([r[k] for r in rs]) for k in rs[0]} for ph, rs in phases.items() if rs
            }
        results["median"] = med
        if "argosy" in running and args.memory_requests:
            port, proc = running["argosy"][0]
            results["memory"] = memory_phase(port, proc.pid, args.memory_requests, lua, load_cpus)
        results["load_after"] = os.getloadavg()
        report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def memory_phase(port: int, pid: int, n: int, lua: Path, cpus: str) -> dict[str, Any]:
    """RSS after a warm-up, then sampled while `n` more requests go through: the router must not grow."""
    print(f"\nmemory: {n:,} requests at 64 connections through argosy ...", flush=True)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wrk(url, 64, 3.0, lua, cpus)
    before = rss_kb(pid)
    done = 0
    samples = [before]
    t0 = time.monotonic()
    while done < n:
        r = wrk(url, 64, 10.0, lua, cpus)
        done += int(r["requests"])
        samples.append(rss_kb(pid))
        print(f"  {done:>10,} requests  RSS {samples[-1] / 1024:.1f} MiB  ({time.monotonic() - t0:.0f} s)",
              flush=True)  # fmt: skip
    after = samples[-1]
    change = (after - before) / before * 100
    spread = (max(samples) - min(samples)) / before * 100
    print(f"  memory: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB over {done:,} requests "
          f"({change:+.1f}%, max-min {spread:.1f}%)", flush=True)  # fmt: skip
    return {"requests": done, "rss_before_kb": before, "rss_after_kb": after, "change_pct": change,
            "spread_pct": spread, "samples_kb": samples}  # fmt: skip


def report(res: dict[str, Any]) -> None:
    med = res["median"]
    direct = med["direct"]["c1"]
    lb, la = res["load_before"][0], res["load_after"][0]
    print(f"\nsummary: medians of {res['rounds']} interleaved rounds; load average {lb:.2f} -> {la:.2f}")

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y else "n/a"

    ref = med.get("nginx") if "c64" in med.get("nginx", {}) and "sse" in med.get("nginx", {}) else None
    print(f"  {'proxy':<9} {'c64 req/s':>10} {'x nginx':>8} {'c1 p50':>8} {'added':>8} {'c1 cpu':>8} {'1cpu p50':>9} {'added':>7} {'c64 cpu':>8} "
          f"{'| SSE bursts chunks/s':>21} {'chunks/CPU-s':>13} {'| interleaved chunks/s':>22} "
          f"{'chunks/CPU-s':>13}")  # fmt: skip
    nan = {k: float("nan") for k in ("rps", "p50", "cpu_us", "chunks_per_s", "chunks_per_cpu_s")}
    for name, m in med.items():
        if name == "direct":
            continue
        c1, c1s, c64, s, si = (m.get(ph, nan) for ph in ("c1", "c1s", "c64", "sse", "ssei"))
        print(f"  {name:<9} {c64['rps']:>10,.0f} {ratio(c64['rps'], ref['c64']['rps']) if ref else '':>8} "
              f"{c1['p50'] * 1e6:>6.0f}us {(c1['p50'] - direct['p50']) * 1e6:>6.0f}us {c1['cpu_us']:>6.0f}us "
              f"{c1s['p50'] * 1e6:>7.0f}us {(c1s['p50'] - direct['p50']) * 1e6:>5.0f}us "
              f"{c64['cpu_us']:>6.0f}us "
              f"{s['chunks_per_s']:>21,.0f} {s['chunks_per_cpu_s']:>13,.0f} {si['chunks_per_s']:>22,.0f} "
              f"{si['chunks_per_cpu_s']:>13,.0f}")  # fmt: skip
    print(
        f"  direct c=1 p50: {direct['p50'] * 1e6:.0f} us; cpu = proxy CPU per request; 1cpu = c=1 with the proxy "
        "on the client's and backend's CPU (no cross-CPU wake-ups);\n  chunks/CPU-s = relayed SSE chunks per "
        "second of proxy CPU (one core's capacity)"
    )
    if "memory" in res:
        m = res["memory"]
        print(
            f"  memory over {m['requests']:,} requests: {m['change_pct']:+.1f}% RSS (max-min {m['spread_pct']:.1f}%)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_sse-backend":
        sse_backend(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_floor-proxy":
        floor_proxy(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_aiohttp-proxy":
        aiohttp_proxy(int(sys.argv[2]), sys.argv[3])
    else:
        main()
