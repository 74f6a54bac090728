"""Router benchmark: Argosy's router vs nginx and a plain aiohttp proxy, measured in one run.

    python bench/router.py                 # full run (~3 minutes)
    python bench/router.py --duration 3    # shorter phases
    python bench/router.py --memory-requests 1000000

It starts a static backend (nginx `return 200`), an SSE backend (uvloop, 256 events per response,
one write per event), nginx as the reference proxy (keep-alive upstream, no buffering), a plain
aiohttp proxy and `argosy router`. Each proxy runs pinned to core 0; wrk and the backends share the
other cores. It prints requests/s, p50/p99 latency, proxy CPU microseconds per request, relayed SSE
chunks/s, and ratios to nginx and to aiohttp. nginx and wrk are installed from Debian if missing.

This is a benchmark, not a test: numbers depend on the machine; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (nginx's worker, taskset's child), from /proc."""
    tree = {pid}
    procs = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = _stat(int(d.name))
            except OSError:
                continue
            procs.append((int(d.name), int(f[1]), f))
    changed = True
    while changed:
        changed = False
        for p, ppid, _ in procs:
            if ppid in tree and p not in tree:
                tree.add(p)
                changed = True
    total = sum(int(f[11]) + int(f[12]) for p, _, f in procs if p in tree)
    return total / os.sysconf("SC_CLK_TCK")


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


def measure(name: str, port: int, pid: int | None, path: str, conns: int, duration: float, lua: Path,
            cpus: str) -> dict[str, float]:  # fmt: skip
    wrk(f"http://127.0.0.1:{port}{path}", conns, 1.0, lua, cpus)  # warm up pools and caches
    c0 = cpu_seconds(pid) if pid else 0.0
    r = wrk(f"http://127.0.0.1:{port}{path}", conns, duration, lua, cpus)
    if pid:
        r["cpu_us"] = (cpu_seconds(pid) - c0) / max(1, r["requests"]) * 1e6
    print(f"  {name:<8} {path:<22} c={conns:<3} {r['rps']:>10.0f} req/s  p50 {r['p50'] * 1e6:>8.0f} us  "
          f"p99 {r['p99'] * 1e6:>8.0f} us" + (f"  cpu {r['cpu_us']:.0f} us/req" if pid else "")
          + (f"  NON-2XX {r['non2xx']}" if r["non2xx"] else ""), flush=True)  # fmt: skip
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured phase")
    ap.add_argument(
        "--memory-requests", type=int, default=200_000, help="requests for the memory-flatness phase"
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
    procs = Procs(tmp)
    results: dict[str, Any] = {"cpus": ncpu, "chunks_per_response": CHUNKS}
    try:
        static_port, sse_port = free_port(), free_port()
        procs.start(
            [nginx_bin(), "-c", str(nginx_conf(tmp, static_port, COMPLETION.replace("'", ""), None))],
            load_cpus,
        )
        procs.start([sys.executable, __file__, "_sse-backend", str(sse_port)], load_cpus)
        wait_port(static_port)
        wait_port(sse_port)
        static, sse = f"127.0.0.1:{static_port}", f"127.0.0.1:{sse_port}"

        print(
            f"machine: {ncpu} CPUs; proxies pinned to CPU {proxy_cpu}, wrk and backends to {load_cpus}\n",
            flush=True,
        )
        print("direct (no proxy):")
        results["direct_c1"] = measure(
            "direct", static_port, None, "/v1/chat/completions", 1, args.duration, lua, load_cpus
        )

        proxies: dict[str, tuple[list[str], list[str]]] = {}
        for name in ("nginx", "aiohttp", "argosy"):
            proxies[name] = ([], [])
        for name in proxies:
            print(f"\n{name}:", flush=True)
            p_static, p_sse = free_port(), free_port()
            if name == "nginx":
                a = procs.start([nginx_bin(), "-c", str(nginx_conf(tmp, p_static, None, static))], proxy_cpu)
                b = procs.start([nginx_bin(), "-c", str(nginx_conf(tmp, p_sse, None, sse))], proxy_cpu)
            elif name == "aiohttp":
                a = procs.start(
                    [sys.executable, __file__, "_aiohttp-proxy", str(p_static), f"http://{static}"], proxy_cpu
                )
                b = procs.start(
                    [sys.executable, __file__, "_aiohttp-proxy", str(p_sse), f"http://{sse}"], proxy_cpu
                )
            else:
                base = [sys.executable, "-m", "argosy", "router", "--policy", "least-outstanding"]
                env = {**os.environ, "ARGOSY_LOG_LEVEL": "WARNING"}
                a = procs.start(
                    [*base, "--listen", f"127.0.0.1:{p_static}", "--backend", f"http://{static}"],
                    proxy_cpu,
                    env=env,
                )
                b = procs.start(
                    [*base, "--listen", f"127.0.0.1:{p_sse}", "--backend", f"http://{sse}"],
                    proxy_cpu,
                    env=env,
                )
            wait_port(p_static)
            wait_port(p_sse)
            r: dict[str, Any] = {}
            r["c1"] = measure(name, p_static, a.pid, "/v1/chat/completions", 1, args.duration, lua, load_cpus)
            r["c64"] = measure(
                name, p_static, a.pid, "/v1/chat/completions", 64, args.duration, lua, load_cpus
            )
            s = measure(name, p_sse, b.pid, "/v1/chat/completions", 16, args.duration, lua, load_cpus)
            s["chunks_per_s"] = s["rps"] * (CHUNKS + 1)
            print(f"  {name:<8} SSE: {s['chunks_per_s']:,.0f} chunks/s relayed", flush=True)
            r["sse"] = s
            if name == "argosy" and args.memory_requests:
                r["memory"] = memory_phase(p_static, a.pid, args.memory_requests, lua, load_cpus)
            results[name] = r
            procs.stop(a)
            procs.stop(b)
        report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def memory_phase(port: int, pid: int, n: int, lua: Path, cpus: str) -> dict[str, float]:
    """RSS after a warm-up, then after `n` more requests: the router must not grow."""
    wrk(f"http://127.0.0.1:{port}/v1/chat/completions", 64, 2.0, lua, cpus)
    before = rss_kb(pid)
    done = 0
    samples = [before]
    while done < n:
        r = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", 64, 5.0, lua, cpus)
        done += int(r["requests"])
        samples.append(rss_kb(pid))
    after = rss_kb(pid)
    change = (after - before) / before * 100
    print(
        f"  memory: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB over {done:,} requests ({change:+.1f}%)"
    )
    return {
        "requests": done,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "change_pct": change,
        "samples_kb": samples,
    }


def report(res: dict[str, Any]) -> None:
    a, n, h = res["argosy"], res["nginx"], res["aiohttp"]
    direct = res["direct_c1"]
    print("\nsummary (ratios: argosy / reference, same run):")

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y else "n/a (reference failed)"

    print(
        f"  throughput c=64: argosy {a['c64']['rps']:,.0f} req/s = {ratio(a['c64']['rps'], n['c64']['rps'])} nginx, "
        f"{ratio(a['c64']['rps'], h['c64']['rps'])} aiohttp   (aiohttp = {ratio(h['c64']['rps'], n['c64']['rps'])} nginx)"
    )
    print(
        f"  added p50 at c=1 over direct: argosy {(a['c1']['p50'] - direct['p50']) * 1e6:.0f} us, "
        f"nginx {(n['c1']['p50'] - direct['p50']) * 1e6:.0f} us, aiohttp {(h['c1']['p50'] - direct['p50']) * 1e6:.0f} us"
    )
    print(
        f"  CPU per request (c=64): argosy {a['c64']['cpu_us']:.0f} us, nginx {n['c64']['cpu_us']:.0f} us, "
        f"aiohttp {h['c64']['cpu_us']:.0f} us"
    )
    print(f"  SSE chunks/s: argosy {a['sse']['chunks_per_s']:,.0f} = {ratio(a['sse']['chunks_per_s'], n['sse']['chunks_per_s'])} "
          f"nginx, {ratio(a['sse']['chunks_per_s'], h['sse']['chunks_per_s'])} aiohttp")  # fmt: skip
    if "memory" in a:
        m = a["memory"]
        print(f"  memory over {m['requests']:,} requests: {m['change_pct']:+.1f}% RSS")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_sse-backend":
        sse_backend(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_aiohttp-proxy":
        aiohttp_proxy(int(sys.argv[2]), sys.argv[3])
    else:
        main()
