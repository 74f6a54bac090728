"""`make demo`: make a tiny model, deploy it on this machine, and talk to it with the OpenAI client.

Everything goes through the `argosy` CLI as a user would type it; the chat goes through the
deployment's router with the official OpenAI Python client, non-streaming and streaming.
A second run reuses the model, the built engine and the running deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

NAME = "tiny"


def argosy(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "argosy", *args]
    print(f"\n$ argosy {' '.join(args)}", flush=True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if res.returncode != 0:
        sys.exit(f"demo: `argosy {' '.join(args)}` failed with exit code {res.returncode}")
    return res.stdout if capture else ""


def main() -> None:
    t0 = time.monotonic()
    home = Path(os.environ.get("ARGOSY_HOME", "~/.argosy")).expanduser()
    model = home / "models" / "tiny-llama"
    if not (model / "config.json").exists():
        argosy("model", "make-tiny", str(model))
    else:
        print(f"\nusing the tiny model already at {model}")

    existing = json.loads(argosy("list", "-o", "json", capture=True))
    ready = [d for d in existing if d["name"] == NAME and d["ready_replicas"] > 0]
    if not ready:
        if any(d["name"] == NAME for d in existing):
            argosy("destroy", NAME)
        print(
            "\n(the first run builds llama.cpp's server from source: several minutes on 2 cores; later runs reuse it)"
        )
        argosy("deploy", str(model), "--name", NAME)
    dep = json.loads(argosy("status", NAME, "-o", "json", capture=True))
    endpoint = dep["endpoint"]

    from openai import OpenAI

    client = OpenAI(base_url=endpoint, api_key="not-needed-on-loopback")
    question = "Tell me about GPUs."
    print(f"\n>>> OpenAI client, non-streaming, via the router at {endpoint}")
    reply = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": question}], max_tokens=32, temperature=0.8
    )
    print(f"user: {question}\nassistant: {reply.choices[0].message.content!r}")
    print(f"usage: {reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens")

    print("\n>>> OpenAI client, streaming")
    stream = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": question}], max_tokens=32, stream=True
    )
    chunks = 0
    print("assistant: ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            print(chunk.choices[0].delta.content, end="", flush=True)
    print(f"\n({chunks} chunks streamed)")

    argosy("status")
    argosy("cost")
    print(
        f"\ndemo finished in {time.monotonic() - t0:.1f}s. The deployment keeps running:\n"
        f"  argosy chat {NAME} 'hello' --stream     # talk to it\n"
        f"  argosy logs {NAME}                       # engine logs\n"
        f"  argosy destroy {NAME} && argosy server stop   # clean up (or: make clean-demo)"
    )


if __name__ == "__main__":
    main()
