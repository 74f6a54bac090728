"""Tokens/s of the tiny model through Argosy's router versus the engine called directly, in one run.

    python bench/engine.py [--rounds 5] [--max-tokens 128] [--concurrency 1 8]

Starts llama-server on the tiny model (made and converted on first use, cached), an `argosy router`
in front of it, then alternates direct and routed rounds (so drift on a noisy machine hits both
alike) and reports medians and the routed/direct ratio. Prints a Markdown table for
docs/performance.md and writes JSON next to it with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from argosy.core import proc
from argosy.core.config import load_settings
from argosy.core.host import free_port
from argosy.serve.engines.base import ServingSpec
from argosy.serve.engines.registry import get_engine
from argosy.serve.engines.runtime import wait_ready


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _one(client: httpx.AsyncClient, url: str, max_tokens: int) -> int:
    r = await client.post(
        url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        },
    )
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


async def _round(url: str, concurrency: int, requests: int, max_tokens: int) -> float:
    """Completion tokens per second over `requests` requests, `concurrency` at a time."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def task() -> int:
            async with sem:
                return await _one(client, url, max_tokens)

        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*[task() for _ in range(requests)]))
        return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    settings = load_settings()
    work = Path(tempfile.mkdtemp(prefix="argosy-bench-"))
    model = settings.cache_dir / "bench" / "tiny-llama"
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-m", "argosy", "model", "make-tiny", str(model)], check=True)

    engine = get_engine("llamacpp")
    spec = ServingSpec(model=str(model), served_name="tiny", port=free_port(), parallel=8, context=8 * 512)
    prepared = engine.prepare(spec, settings, lambda m, f=None: print(f"[prepare] {m}", file=sys.stderr))
    cmd = engine.command(spec, prepared)
    eng = proc.spawn(list(cmd.argv), work / "engine.log", env={**os.environ, **cmd.env})
    router_port = free_port()
    router = proc.spawn(
        [
            sys.executable,
            "-m",
            "argosy",
            "router",
            "--listen",
            f"127.0.0.1:{router_port}",
            "--backend",
            cmd.base_url,
        ],
        work / "router.log",
    )
    try:
        wait_ready(cmd, pid=eng.pid, timeout=120, log_path=work / "engine.log")
        routed = f"http://127.0.0.1:{router_port}"
        if not proc.wait_until(lambda: _up(routed + "/health"), 30):
            sys.exit("the router did not start; see " + str(work / "router.log"))
        asyncio.run(_round(cmd.base_url, 1, 2, 8))  # warm-up both paths
        asyncio.run(_round(routed, 1, 2, 8))
        results = []
        for c in args.concurrency:
            direct, via = [], []
            for _ in range(args.rounds):
                n = max(4, 2 * c)
                direct.append(asyncio.run(_round(cmd.base_url, c, n, args.max_tokens)))
                via.append(asyncio.run(_round(routed, c, n, args.max_tokens)))
            d, v = statistics.median(direct), statistics.median(via)
            results.append(
                {
                    "concurrency": c,
                    "direct_tok_s": d,
                    "router_tok_s": v,
                    "ratio": v / d,
                    "rounds": args.rounds,
                }
            )
    finally:
        proc.stop(router.pid)
        proc.stop(eng.pid)
        shutil.rmtree(work, ignore_errors=True)  # logs of a finished run are not kept

    print(f"\ntiny model, {args.max_tokens} tokens per reply, medians of {args.rounds} alternating rounds")
    print("| concurrency | engine direct tok/s | through router tok/s | router / direct |")
    print("|---|---|---|---|")
    for r in results:
        print(
            f"| {r['concurrency']} | {r['direct_tok_s']:.0f} | {r['router_tok_s']:.0f} | {r['ratio']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
