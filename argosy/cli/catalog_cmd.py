"""`argosy gpus`, `argosy plan` and `argosy catalog refresh|status`."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from argosy.catalog import (
    DEFAULT_TTL_S,
    Offering,
    builtin_models,
    human_age,
    is_stale,
    load_gpus,
    load_offerings,
    offering_key,
    price_age_s,
    select_offerings,
    size_model,
)
from argosy.core.config import Settings, load_settings
from argosy.core.errors import ArgosyError, ConfigError

# Providers whose Offerings are merged in by default: ones that answer without network calls (this
# machine; the serverless providers' published list prices). Cloud providers' live listings come in
# through `argosy catalog refresh` instead, and the fake provider (a simulator whose invented prices
# would win real plans) only when named with --provider.
LIVE_SOURCES_DEFAULT = ("local", "modal", "runpod-serverless", "baseten", "cloudrun")
OUTPUTS = ("table", "json")


def gather_offerings(settings: Settings, also: tuple[str, ...] = ()) -> list[Offering]:
    """Snapshot + cached live prices + what providers with the Offerings capability report right now."""
    from argosy.providers.base import Offerings
    from argosy.providers.registry import PROVIDERS, get_provider

    live: list[Offering] = []
    for name in dict.fromkeys((*LIVE_SOURCES_DEFAULT, *also)):
        if name not in PROVIDERS.names():
            continue
        try:
            provider = get_provider(name, settings)
            if isinstance(provider, Offerings):
                live.extend(provider.offerings())
        except ArgosyError as exc:
            # A provider that cannot list its live offerings (no credentials, no network) must not hide
            # the rest of the catalog: its snapshot and cached prices still stand.
            Console(stderr=True).print(
                f"[yellow]note:[/] {name} live offerings unavailable: {exc.message}", highlight=False
            )
    return load_offerings(settings, live=live)


def _check_output(output: str, allowed: tuple[str, ...]) -> None:
    if output not in allowed:
        raise ConfigError(f"unknown output format '{output}'", fix=f"use -o {' or -o '.join(allowed)}")


def offering_row(o: Offering, now: datetime, ttl_s: float) -> dict[str, Any]:
    age = price_age_s(o, now)
    per_gpu = (o.price_per_hour / o.gpu_count) if (o.price_per_hour is not None and o.gpu_count) else None
    spec = load_gpus().specs.get(o.gpu or "")
    return {
        "key": offering_key(o),
        "provider": o.provider,
        "region": o.region,
        "instance_type": o.instance_type,
        "gpu": o.gpu,
        "gpu_count": o.gpu_count,
        "vram_gb": spec.vram_gb if spec else None,
        "vcpus": o.vcpus,
        "ram_gb": o.ram_gb,
        "kind": o.kind,
        "tier": o.tier or None,
        "price_per_hour": o.price_per_hour,
        "price_per_gpu_hour": round(per_gpu, 4) if per_gpu is not None else None,
        "per_second_billing": o.per_second_billing,
        "available": o.available,
        "source": o.source,
        "fetched_at": o.fetched_at,
        "age_s": int(age) if age is not None else None,
        "stale": is_stale(o, now, ttl_s),
        "origin": o.extra.get("origin", "live"),
    }


def short_source(source: str) -> str:
    """The source without scheme and 'www.', cut to fit a table column (JSON/CSV carry it whole)."""
    text = source.removeprefix("https://").removeprefix("http://").removeprefix("www.")
    return text if len(text) <= 36 else text[:35] + "…"


def register(app: typer.Typer) -> None:
    @app.command("gpus")
    def gpus(
        gpu: str = typer.Option(None, "--gpu", help="Only this GPU (aliases work: A100, 4090, 'H100 SXM')."),
        provider: str = typer.Option(None, "--provider", help="Only this provider."),
        kind: str = typer.Option(None, "--kind", help="vm, spot, serverless or local."),
        region: str = typer.Option(None, "--region", help="Only this region."),
        max_price: float = typer.Option(None, "--max-price", help="At most this many USD per hour."),
        specs: bool = typer.Option(False, "--specs", help="Show the GPU spec table instead of offerings."),
        output: str = typer.Option("table", "-o", "--output", help="table, json or csv."),
    ) -> None:
        """GPU offerings across providers, cheapest first, with each price's source and age."""
        _check_output(output, ("table", "json", "csv"))
        if specs:
            _print_specs(output)
            return
        settings = load_settings()
        offerings = gather_offerings(settings, (provider,) if provider else ())
        chosen = select_offerings(
            offerings, gpu=gpu, provider=provider, kind=kind, region=region, max_price=max_price
        )
        chosen.sort(key=lambda o: (o.price_per_hour is None, o.price_per_hour or 0.0, o.provider))
        now = datetime.now(tz=UTC)
        rows = [offering_row(o, now, DEFAULT_TTL_S) for o in chosen]
        if output == "json":
            typer.echo(json.dumps(rows, indent=2))
            return
        if output == "csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["key"])
            writer.writeheader()
            writer.writerows(rows)
            sys.stdout.write(buf.getvalue())
            return
        table = Table(title=f"{len(rows)} offerings (stale = price older than {human_age(DEFAULT_TTL_S)})")
        for col in ("provider", "region", "instance", "gpu", "kind", "$/h", "$/gpu-h", "age", "source"):
            table.add_column(col, justify="right" if col.startswith("$") else "left", overflow="fold")
        for r in rows:
            price = "unknown" if r["price_per_hour"] is None else f"{r['price_per_hour']:.4g}"
            per_gpu = "" if r["price_per_gpu_hour"] is None else f"{r['price_per_gpu_hour']:.4g}"
            age = human_age(r["age_s"]) + (" [yellow]stale[/]" if r["stale"] else "")
            hw = f"{r['gpu_count']}x {r['gpu']}" if r["gpu"] else "CPU"
            kind = (
                r["kind"]
                + (f" {r['tier']}" if r["tier"] else "")
                + ("" if r["available"] else " [red]no capacity[/]")
            )
            table.add_row(
                r["provider"],
                r["region"],
                r["instance_type"],
                hw,
                kind,
                price,
                per_gpu,
                age,
                short_source(r["source"]),
            )
        Console(soft_wrap=False).print(table)

    @app.command("plan")
    def plan(
        model: str = typer.Argument(
            None, help="A built-in model name (see --list-models) or a path to config.json."
        ),
        max_model_len: int = typer.Option(
            None, "--max-model-len", help="Context length to size the KV cache for."
        ),
        quantization: str = typer.Option(
            None, "--quantization", "-q", help="bf16, fp16, fp8, int8, awq, gptq, mxfp4."
        ),
        concurrency: int = typer.Option(
            1, "--concurrency", help="Sequences served at once (KV cache for each)."
        ),
        objective: str = typer.Option(
            "cost", "--objective", help="cost, cost-per-token, carbon, balanced, availability."
        ),
        kind: list[str] = typer.Option(
            None, "--kind", help="Allowed kinds (repeatable): vm, spot, serverless, local."
        ),
        provider: list[str] = typer.Option(None, "--provider", help="Allowed providers (repeatable)."),
        region: list[str] = typer.Option(None, "--region", help="Allowed regions (repeatable)."),
        exclude_region: list[str] = typer.Option(
            None, "--exclude-region", help="Denied regions (repeatable)."
        ),
        gpu: str = typer.Option(None, "--gpu", help="Only this GPU."),
        max_price: float = typer.Option(None, "--max-price", help="Budget cap in USD per hour."),
        allow_cpu: bool = typer.Option(
            None, "--cpu/--no-cpu", help="Allow/forbid CPU-only offerings (default: small models only)."
        ),
        fallbacks: int = typer.Option(5, "--fallbacks", help="How many alternatives to list."),
        list_models: bool = typer.Option(False, "--list-models", help="List the built-in models and exit."),
        output: str = typer.Option("table", "-o", "--output", help="table or json."),
    ) -> None:
        """Size MODEL and choose where to run it, with the reason and the alternatives."""
        from argosy.placement import PlacementRequest, place

        _check_output(output, OUTPUTS)
        if list_models:
            _print_models(output)
            return
        if not model:
            raise ConfigError("plan needs a MODEL", fix="argosy plan llama-3.1-8b (or --list-models)")
        requirement = size_model(model, quantization, max_model_len, concurrency)
        settings = load_settings()
        offerings = gather_offerings(settings, tuple(provider or ()))
        request = PlacementRequest(
            requirement=requirement,
            gpu=gpu,
            kinds=tuple(kind or ()),
            providers=tuple(provider or ()),
            regions=tuple(region or ()),
            exclude_regions=tuple(exclude_region or ()),
            max_price_per_hour=max_price,
            allow_cpu=allow_cpu,
            max_fallbacks=fallbacks,
        )
        result = place(request, offerings, objective)
        if output == "json":
            typer.echo(json.dumps(result.to_dict(), indent=2))
            return
        console = Console(soft_wrap=True, highlight=False)
        for line in result.explanation:
            console.print(line, markup=False)

    catalog = typer.Typer(help="The GPU and price catalog.", no_args_is_help=True)

    @catalog.command("refresh")
    def refresh_cmd(
        provider: list[str] = typer.Option(None, "--provider", help="Only these providers (repeatable)."),
        output: str = typer.Option("table", "-o", "--output", help="table or json."),
    ) -> None:
        """Fetch live prices from provider price APIs; providers without credentials keep snapshot prices."""
        from argosy.catalog.refresh import refresh
        from argosy.providers.price_sources import price_sources

        _check_output(output, OUTPUTS)
        settings = load_settings()
        # The providers' own API clients price Lambda, RunPod and Vast.ai (one client per provider).
        outcomes = refresh(settings, provider or None, sources=price_sources(settings))
        if output == "json":
            typer.echo(json.dumps([o.to_dict() for o in outcomes], indent=2))
        else:
            table = Table(title=f"price refresh (cache: {settings.cache_dir / 'catalog'})")
            for col in ("provider", "status", "offerings", "detail"):
                table.add_column(col, overflow="fold")
            for o in outcomes:
                colour = {"live": "green", "snapshot": "yellow", "failed": "red"}[o.status]
                detail = o.detail + (f"\nfix: {o.fix}" if o.fix else "")
                if o.skipped:
                    detail += f"\nskipped {len(o.skipped)}: " + "; ".join(o.skipped[:3])
                table.add_row(o.provider, f"[{colour}]{o.status}[/]", str(o.count), detail)
            Console().print(table)
        if outcomes and all(o.status == "failed" for o in outcomes):
            raise typer.Exit(1)

    @catalog.command("status")
    def status_cmd(output: str = typer.Option("table", "-o", "--output", help="table or json.")) -> None:
        """Where each provider's prices come from now, and how old they are."""
        _check_output(output, OUTPUTS)
        settings = load_settings()
        now = datetime.now(tz=UTC)
        by_provider: dict[str, list[Offering]] = {}
        for o in gather_offerings(settings):
            by_provider.setdefault(o.provider, []).append(o)
        rows = []
        for name, offs in sorted(by_provider.items()):
            ages = [a for a in (price_age_s(o, now) for o in offs) if a is not None]
            origins = sorted({o.extra.get("origin", "live") for o in offs})
            rows.append(
                {
                    "provider": name,
                    "offerings": len(offs),
                    "origin": ",".join(origins),
                    "newest_age_s": int(min(ages)) if ages else None,
                    "stale": all(is_stale(o, now) for o in offs),
                }
            )
        if output == "json":
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(title="catalog status")
        for col in ("provider", "offerings", "origin", "newest price", "stale"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["provider"],
                str(r["offerings"]),
                r["origin"],
                human_age(r["newest_age_s"]),
                "yes" if r["stale"] else "no",
            )
        Console().print(table)

    app.add_typer(catalog, name="catalog")


def _print_specs(output: str) -> None:
    specs = [s.to_dict() for s in load_gpus().specs.values()]
    if output == "json":
        typer.echo(json.dumps(specs, indent=2))
        return
    if output == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(specs[0]))
        writer.writeheader()
        writer.writerows({**s, "aliases": "|".join(s["aliases"])} for s in specs)
        sys.stdout.write(buf.getvalue())
        return
    table = Table(title="GPU specs (per GPU)")
    for col in ("gpu", "arch", "VRAM GB", "bf16", "fp8", "TFLOPs", "GB/s", "TDP W"):
        table.add_column(col)
    for s in specs:
        tf = s["dense_bf16_tflops"] or s["dense_fp16_tflops"]
        table.add_row(
            s["name"], s["architecture"], f"{s['vram_gb']:g}", "yes" if s["bf16"] else "no", "yes" if s["fp8"] else "no",
            f"{tf:g}", f"{s['bandwidth_gbps']:g}", f"{s['tdp_w']:g}",
        )  # fmt: skip
    Console().print(table)


def _print_models(output: str) -> None:
    rows = [size_model(m).to_dict() for m in builtin_models().values()]
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in models (sized at their default context, bf16 unless native)")
    for col in ("model", "params B", "active B", "dtype", "weights GB", "KV KiB/token"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"], f"{r['params_b']:g}", f"{r['active_params_b']:g}", r["quantization"],
            f"{r['weights_gb']:.1f}", f"{r['kv_bytes_per_token'] / 1024:g}",
        )  # fmt: skip
    Console().print(table)
