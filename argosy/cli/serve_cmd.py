"""Serving commands: deploy, status, list, logs, chat, destroy, cost."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from argosy.cli.connect import connect
from argosy.cli.output import OUTPUT_OPTION, ago, check_format, emit_json, money, table
from argosy.client import ArgosyClient
from argosy.core.errors import ArgosyError

err = Console(stderr=True, soft_wrap=True)

# After this many failed replicas in one wait, `deploy` stops waiting and shows why.
FAILURES_BEFORE_GIVING_UP = 2


def _wait_ready(client: ArgosyClient, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen_failed: set[str] = set()
    with err.status(f"waiting for '{name}' to be ready…") as status:
        while True:
            d = client.deployment(name)
            for r in d["replicas"]:
                if r["state"] == "failed" and r["id"] not in seen_failed:
                    seen_failed.add(r["id"])
                    err.print(f"[red]replica {r['id']} failed:[/] {escape(r['reason'])}", highlight=False)
            if d["ready_replicas"] >= max(1, min(d["desired_replicas"], 1)) and d["endpoint"]:
                return d
            if len(seen_failed) >= FAILURES_BEFORE_GIVING_UP:
                raise ArgosyError(
                    f"'{name}' failed to start {len(seen_failed)} times (reasons above); it keeps retrying with back-off",
                    fix=f"see `argosy logs {name}`; fix the cause, then `argosy destroy {name}` and deploy again",
                )
            live = [r for r in d["replicas"] if r["state"] not in ("failed", "terminated", "preempted")]
            if d["ready_replicas"] and not d["endpoint"]:
                last = client.events(deployment=name)[-1:]
                status.update(
                    f"'{name}': replica ready, waiting for the router — {last[0]['reason'] if last else ''}"
                )
            elif live:
                r = live[-1]
                msg = (r.get("workload") or {}).get("message") or r["reason"]
                status.update(f"'{name}': replica {r['state']} — {msg}")
            if time.monotonic() > deadline:
                raise ArgosyError(
                    f"'{name}' was not ready after {timeout:.0f}s", fix=f"see `argosy status {name}`"
                )
            time.sleep(0.5)


def _print_placement(placement: dict[str, Any]) -> None:
    for line in placement["explanation"]:
        err.print(escape(line), highlight=False)
    skipped = placement.get("skipped_providers") or {}
    if skipped:
        err.print(
            "Not considered (set up with `argosy check`): "
            + "; ".join(f"{k} ({v})" for k, v in skipped.items()),
            highlight=False,
            markup=False,
        )


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(
        model: str = typer.Argument(..., help="Model directory (Hugging Face format or GGUF)."),
        name: str = typer.Option(None, "--name", "-n", help="Deployment name (default: from the model)."),
        provider: str = typer.Option(
            None, "--provider", "-p", help="Where to run the replicas (default: placement chooses)."
        ),
        replicas: int = typer.Option(1, "--replicas", "-r", min=0, max=64),
        engine: str = typer.Option(None, "--engine", help="Inference engine (default: llamacpp on CPU)."),
        gpu: str = typer.Option(None, "--gpu", help="GPU type to run on."),
        fallback: str = typer.Option(
            None,
            "--fallback",
            help="Serverless provider for the fallback tier (modal, runpod-serverless, ...).",
        ),
        fallback_model: str = typer.Option(
            None, "--fallback-model", help="What the fallback endpoint serves (a hub id; default: MODEL)."
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until a replica is ready."),
        timeout: float = typer.Option(1800, help="Seconds to wait for readiness."),
        output: str = OUTPUT_OPTION,
    ) -> None:
        """Deploy a model behind an OpenAI-compatible endpoint."""
        check_format(output)
        client = connect(err)
        res = client.deploy(
            model,
            name=name,
            provider=provider,
            replicas=replicas,
            engine=engine,
            gpu=gpu,
            fallback=fallback,
            fallback_model=fallback_model,
            dry_run=dry_run,
        )
        plan = res["plan"]
        if dry_run:
            if output == "json":
                emit_json(plan)
            else:
                err.print(f"[bold]plan for '{plan['name']}'[/] (nothing was changed)")
                if plan.get("placement"):
                    _print_placement(plan["placement"])
                text = plan.pop("fallback_text", None)
                plan.pop("fallback_plan", None)
                node_text = (plan.get("node_plan") or {}).pop("text", None)
                typer.echo(json.dumps(plan, indent=2, default=str))
                if node_text:
                    typer.echo("\n" + node_text)
                if text:
                    typer.echo("\n" + text)
            return
        dep = res["deployment"]
        o = plan["offering"]
        if plan.get("placement"):
            _print_placement(plan["placement"])
        err.print(
            f"deploying [bold]{dep['name']}[/]: {plan['engine']} on {o['provider']}/{o['instance_type']} "
            f"x{plan['replicas']} at {money(plan['estimated_cost_per_hour'])}/h",
            highlight=False,
        )
        if wait and replicas > 0:
            dep = _wait_ready(client, dep["name"], timeout)
        if output == "json":
            emit_json(dep)
            return
        if dep.get("endpoint"):
            ep = dep["endpoint"]
            err.print(f"[green]ready[/]: {ep}  (model name: {dep['name']})")
            err.print(
                f"  try: curl {ep}/chat/completions -H 'Content-Type: application/json' "
                f'-d \'{{"model": "{dep["name"]}", "messages": [{{"role": "user", "content": "Hi"}}]}}\'',
                highlight=False,
            )

    @app.command("list")
    def list_(
        all: bool = typer.Option(False, "--all", "-a", help="Include destroyed deployments."),
        output: str = OUTPUT_OPTION,
    ) -> None:
        """List deployments."""
        check_format(output)
        deps = connect(err).deployments(all=all)
        if output == "json":
            emit_json(deps)
            return
        table(
            None,
            ["name", "state", "ready", "engine", "provider", "endpoint", "cost"],
            [
                [
                    d["name"],
                    d["state"],
                    f"{d['ready_replicas']}/{d['desired_replicas']}",
                    d["engine"],
                    d["provider"],
                    d["endpoint"] or "-",
                    money(d["cost"]["cost_usd"]),
                ]
                for d in deps
            ],
        )

    @app.command()
    def status(name: str = typer.Argument(None), output: str = OUTPUT_OPTION) -> None:
        """Show deployments, or one deployment with its replicas and recent events."""
        check_format(output)
        client = connect(err)
        if name is None:
            deps = client.deployments()
            nodes = client.nodes()
            if output == "json":
                emit_json({"deployments": deps, "nodes": nodes})
                return
            table(
                "deployments",
                ["name", "state", "ready", "endpoint", "cost"],
                [
                    [
                        d["name"],
                        d["state"],
                        f"{d['ready_replicas']}/{d['desired_replicas']}",
                        d["endpoint"] or "-",
                        money(d["cost"]["cost_usd"]),
                    ]
                    for d in deps
                ],
            )
            table(
                "nodes",
                ["name", "provider", "status", "cpus", "ram", "gpus", "heartbeat"],
                [
                    [
                        n["name"],
                        n["provider"],
                        n["status"],
                        n["resources"].get("cpus"),
                        n["resources"].get("ram_gb"),
                        len(n["resources"].get("gpus", []) or []),
                        ago(n["last_heartbeat"]),
                    ]
                    for n in nodes
                ],
            )
            return
        d = client.deployment(name)
        events = client.events(deployment=name)[-15:]
        if output == "json":
            emit_json({**d, "events": events})
            return
        err.print(
            f"[bold]{d['name']}[/] {d['state']} — {d['ready_replicas']}/{d['desired_replicas']} ready — "
            f"{d['engine']} on {d['provider']} — endpoint {d['endpoint'] or '-'} — cost {money(d['cost']['cost_usd'])}",
            highlight=False,
        )
        table(
            "replicas",
            ["id", "state", "since", "url", "$/h", "reason"],
            [
                [
                    r["id"],
                    r["state"],
                    ago(r["since"]),
                    r["url"] or "-",
                    money(r["price_per_hour"]),
                    r["reason"][:80],
                ]
                for r in d["replicas"]
            ],
        )
        table(
            "events",
            ["when", "object", "change", "reason"],
            [
                [ago(e["ts"]), e["object_id"], f"{e['from'] or ''} → {e['to']}", e["reason"][:100]]
                for e in events
            ],
        )

    @app.command()
    def logs(
        name: str,
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming new lines."),
        tail: int = typer.Option(100, "--tail", help="Lines of history per replica."),
    ) -> None:
        """Show a deployment's engine logs."""
        for chunk in connect(err).logs(name, follow=follow, tail=tail):
            typer.echo(chunk, nl=False)

    @app.command()
    def chat(
        name: str,
        prompt: str,
        stream: bool = typer.Option(False, "--stream", help="Print tokens as they arrive."),
        max_tokens: int = typer.Option(64, "--max-tokens"),
        temperature: float = typer.Option(0.7, "--temperature"),
    ) -> None:
        """Send one chat message to a deployment through its router."""
        d = connect(err).deployment(name)
        if not d.get("endpoint"):
            raise ArgosyError(
                f"'{name}' has no ready endpoint ({d['state']})", fix=f"see `argosy status {name}`"
            )
        body = {
            "model": name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": stream,
        }
        url = d["endpoint"] + "/chat/completions"
        try:
            if not stream:
                r = httpx.post(url, json=body, timeout=120)
                if r.status_code >= 400:
                    raise ArgosyError(f"the endpoint answered {r.status_code}: {r.text[:300]}")
                typer.echo(r.json()["choices"][0]["message"]["content"])
                return
            with httpx.stream("POST", url, json=body, timeout=120) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ArgosyError(f"the endpoint answered {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise ArgosyError(f"the stream ended with an error: {chunk['error']}")
                    for c in chunk.get("choices", []):
                        typer.echo((c.get("delta") or {}).get("content") or "", nl=False)
                typer.echo()
        except httpx.TransportError as exc:
            raise ArgosyError(f"cannot reach {url}: {exc}", fix=f"see `argosy status {name}`") from exc

    @app.command()
    def destroy(
        name: str = typer.Argument(None),
        all: bool = typer.Option(False, "--all", help="Destroy every deployment."),
        wait: bool = typer.Option(True, "--wait/--no-wait"),
        timeout: float = typer.Option(120, help="Seconds to wait for clean-up."),
    ) -> None:
        """Destroy a deployment (or --all): drain replicas, stop engines and the router."""
        if not name and not all:
            raise typer.BadParameter("give a deployment NAME or --all")
        client = connect(err)
        names = [d["name"] for d in client.deployments()] if all else [name]
        for n in names:
            client.destroy(n)
        if wait and names:
            deadline = time.monotonic() + timeout
            with err.status(f"destroying {', '.join(names)}…"):
                while time.monotonic() < deadline:
                    live = {d["name"] for d in client.deployments()}
                    if not live.intersection(names):
                        break
                    time.sleep(0.5)
                else:
                    raise ArgosyError(
                        "clean-up is still running", fix="check `argosy status`; it continues in the server"
                    )
        err.print(f"destroyed {', '.join(names) if names else 'nothing (no deployments)'}")

    @app.command()
    def check(
        provider: str = typer.Option(None, "--provider", "-p", help="Check one provider only."),
        output: str = OUTPUT_OPTION,
    ) -> None:
        """Preflight every provider: credentials, tools, quotas — each failure with its fix."""
        check_format(output)
        rows = connect(err).providers(check=True, name=provider)
        if output == "json":
            emit_json(rows)
            return
        table(
            "provider checks (run by the server, with the server's environment)",
            ["provider", "check", "ok", "detail", "fix"],
            [
                [
                    r["name"],
                    c["name"],
                    "yes" if c["ok"] else "NO",
                    c["detail"],
                    "" if c["ok"] else (c["fix"] or ""),
                ]
                for r in rows
                for c in r["checks"]
            ],
        )
        if any(not c["ok"] for r in rows for c in r["checks"]):
            err.print("credentials are read from the server's environment: restart it after setting them")

    def _fallback_cost(sv: dict[str, float] | None) -> str:
        """The serverless fallback's share of the cost, and whether it was billed or estimated."""
        if not sv or not sv.get("seconds") and not sv.get("cost_usd"):
            return "-"
        kinds = [k for k in ("measured", "estimate") if sv.get(f"{k}_usd")]
        return f"{money(sv['cost_usd'])} ({'+'.join(kinds) or 'measured'})"

    @app.command()
    def cost(name: str = typer.Argument(None), output: str = OUTPUT_OPTION) -> None:
        """What each deployment has cost so far, from the ledger."""
        check_format(output)
        led = connect(err).ledger(name)
        if output == "json":
            emit_json(led)
            return
        table(
            "cost",
            [
                "deployment",
                "state",
                "provider",
                "replica-hours",
                "rate $/h",
                "cost",
                "fallback",
                "tokens in",
                "tokens out",
            ],
            [
                [
                    r["deployment"],
                    r["state"],
                    r["provider"],
                    f"{(r['seconds'] - r.get('serverless', {}).get('seconds', 0.0)) / 3600:.4f}",
                    ", ".join(f"{x:g}" for x in r["rates"]) or "-",
                    money(r["cost_usd"]),
                    _fallback_cost(r.get("serverless")),
                    f"{r.get('tokens', {}).get('prompt_tokens', 0):,}",
                    f"{r.get('tokens', {}).get('completion_tokens', 0):,}",
                ]
                for r in led["deployments"]
            ],
        )
        tok = led["total"].get("tokens", {})
        sv = led["total"].get("serverless") or {}
        err.print(
            f"total: {money(led['total']['cost_usd'])} over "
            f"{(led['total']['seconds'] - sv.get('seconds', 0.0)) / 3600:.4f} replica-hours"
            + (f" (fallback endpoints {_fallback_cost(sv)})" if _fallback_cost(sv) != "-" else "")
            + "; "
            f"tokens {tok.get('prompt_tokens', 0):,} in, {tok.get('completion_tokens', 0):,} out (from the routers)"
        )
