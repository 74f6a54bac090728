"""Deployment service: validate a request, plan it (pure), record desired state, destroy, describe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from argosy.core.errors import ArgosyError, ConflictError, NotFoundError, did_you_mean
from argosy.core.ids import new_id, valid_name
from argosy.providers.base import InstanceRequest, Instances
from argosy.providers.registry import PROVIDERS
from argosy.providers.render import DRY_RUN_TOKEN, plan_text
from argosy.serve.engine_glue import parse_engine_args
from argosy.serve.reconciler import offering_dict, router_table
from argosy.store.events import transition
from argosy.store.ledger import totals
from argosy.store.models import Deployment, Replica


@dataclass
class DeployRequest:
    model: str
    name: str | None = None
    provider: str | None = None  # None: placement chooses
    engine: str | None = None
    replicas: int = 1
    engine_args: dict[str, Any] = field(default_factory=dict)
    gpu: str | None = None
    fallback: str | None = None  # a serverless provider for the fallback tier
    fallback_model: str | None = None  # what the endpoint loads (a hub id: it cannot read local paths)
    lora: str | None = None  # a LoRA adapter dir served on top of `model` (a fine-tune's result)


def default_name(model: str) -> str:
    base = Path(model.rstrip("/")).name.lower()
    cleaned = "".join(c if c.isalnum() else "-" for c in base).strip("-")[:40] or "model"
    return cleaned


def validate(req: DeployRequest, engines: list[str], default_engine: str) -> DeployRequest:
    """Check a request before anything is recorded; errors say what to do."""
    if req.provider is not None and req.provider not in PROVIDERS.names():
        near = did_you_mean(req.provider, PROVIDERS.names())
        raise ArgosyError(
            f"unknown provider '{req.provider}'." + (f" Did you mean '{near}'?" if near else ""),
            fix=f"use one of: {', '.join(PROVIDERS.names())}",
        )
    engine = req.engine or default_engine
    if engine not in engines:
        near = did_you_mean(engine, engines)
        raise ArgosyError(
            f"unknown engine '{engine}'." + (f" Did you mean '{near}'?" if near else ""),
            fix=f"use one of: {', '.join(engines)}",
        )
    parse_engine_args(req.engine_args)
    if req.replicas < 0 or req.replicas > 64:
        raise ArgosyError(f"--replicas must be between 0 and 64, not {req.replicas}")
    looks_local = req.model.startswith((".", "/", "~")) or Path(req.model).expanduser().exists()
    model = req.model
    if looks_local:
        p = Path(req.model).expanduser().resolve()
        if not p.exists():
            raise ArgosyError(
                f"model path {p} does not exist",
                fix=f"make a tiny test model there with `argosy model make-tiny {req.model}`, or check the path",
            )
        if p.is_dir() and not (p / "config.json").exists() and not any(p.glob("*.gguf")):
            raise ArgosyError(
                f"{p} is not a model directory (no config.json or .gguf file in it)",
                fix="point at a Hugging Face-format model directory or a GGUF file",
            )
        model = str(p)
    elif req.provider in (None, "local"):
        raise ArgosyError(
            f"'{req.model}' is not a local path, and this machine cannot download models from a hub",
            fix="download the model first and deploy its directory, or try `argosy model make-tiny ./tiny`",
        )
    name = req.name or default_name(model)
    if not valid_name(name):
        raise ArgosyError(
            f"'{name}' is not a valid deployment name",
            fix="use lower-case letters, digits and '-', up to 63 characters (e.g. --name my-model)",
        )
    fallback_model = req.fallback_model
    if req.fallback:
        if req.fallback not in PROVIDERS.names():
            near = did_you_mean(req.fallback, PROVIDERS.names())
            raise ArgosyError(
                f"unknown fallback provider '{req.fallback}'." + (f" Did you mean '{near}'?" if near else ""),
                fix=f"use one of: {', '.join(PROVIDERS.names())}",
            )
        if fallback_model is None and looks_local:
            raise ArgosyError(
                "a serverless fallback cannot load a model from this machine's disk",
                fix="pass --fallback-model ORG/NAME: the same weights, by their hub id",
            )
        fallback_model = fallback_model or req.model
    return DeployRequest(
        model,
        name,
        req.provider,
        engine,
        req.replicas,
        dict(req.engine_args),
        req.gpu,
        req.fallback,
        fallback_model,
        req.lora,
    )


def plan_deployment(
    req: DeployRequest,
    provider_for: Callable[[str], Any],
    engine_plan: dict[str, Any],
    server_url: str,
    fallback: str | None = None,
    settings: Any = None,
) -> dict[str, Any]:
    """What `deploy` would do, with no side effects (`--dry-run`).

    With no provider named, catalog placement chooses the offering (and its fallbacks) among the
    providers that can run replicas now; the explanation says why.
    """
    from argosy.serve.placing import place_deployment

    chosen, ordered, skipped = place_deployment(req.model, req.gpu, settings, provider_for, only=req.provider)
    offering, fallbacks = ordered[0], ordered[1:]
    req.provider = offering.provider
    placement = {"explanation": chosen.explanation, "skipped_providers": skipped, "strategy": chosen.strategy}
    provider = provider_for(req.provider)
    node_plan = None
    if isinstance(provider, Instances):
        # A dry run has no node to register yet: the placeholder token shows where the real one goes.
        p = provider.plan(
            InstanceRequest(
                name=f"{req.name}-replica",
                offering=offering,
                server_url=server_url,
                agent_token=DRY_RUN_TOKEN,
            )
        )
        node_plan = {
            "provider": p.provider,
            "action": p.action,
            "payload": p.payload,
            "notes": p.notes,
            "text": plan_text(p, placement_reason=" ".join(chosen.explanation[:2])),
        }
    price = offering.price_per_hour
    extra: dict[str, Any] = {}
    if fallback:
        from argosy.providers.templates.fallback import plan_fallback, render_fallback_plan

        if node_plan is None:
            raise ArgosyError(f"provider '{req.provider}' runs no replicas to put a fallback beside")
        fp = plan_fallback(p, req.fallback_model or req.model, fallback, settings, name=req.name, gpu=req.gpu)
        extra = {"fallback_plan": fp.to_dict(), "fallback_text": render_fallback_plan(fp)}
    return {
        **extra,
        "placement": placement,
        "name": req.name,
        "model": req.model,
        "engine": req.engine,
        "provider": req.provider,
        "replicas": req.replicas,
        "offering": offering_dict(offering),
        "fallback_offerings": [offering_dict(o) for o in fallbacks],
        "node_plan": node_plan,
        "engine_plan": engine_plan,
        "estimated_cost_per_hour": None if price is None else price * req.replicas,
    }


def create(s: Session, req: DeployRequest, plan: dict[str, Any], now: float) -> Deployment:
    existing = s.scalars(
        select(Deployment).where(Deployment.name == req.name, Deployment.state != "destroyed")
    ).first()
    if existing is not None:
        raise ConflictError(
            f"a deployment named '{req.name}' already exists ({existing.state})",
            fix=f"choose another --name, or `argosy destroy {req.name}` first",
        )
    dep = Deployment(
        id=new_id("dep"),
        name=str(req.name),
        model=req.model,
        engine=str(req.engine),
        provider=req.provider,
        replicas=req.replicas,
        state="new",
        spec={
            "engine_args": req.engine_args,
            "offering": plan["offering"],
            "fallback_offerings": plan["fallback_offerings"],
            "gpu": req.gpu,
            "fallback": {"provider": req.fallback, "model": req.fallback_model} if req.fallback else None,
            "lora": req.lora,
        },
        created_at=now,
        updated_at=now,
    )
    s.add(dep)
    s.flush()
    transition(
        s, dep, "active", f"deployed {req.model} with {req.engine} on {req.provider} x{req.replicas}", now
    )
    return dep


def get(s: Session, name: str) -> Deployment:
    dep = s.scalars(
        select(Deployment)
        .where(Deployment.name == name, Deployment.state != "destroyed")
        .order_by(Deployment.created_at.desc())
    ).first()
    if dep is None:
        names = s.scalars(select(Deployment.name).where(Deployment.state != "destroyed")).all()
        near = did_you_mean(name, names)
        raise NotFoundError(
            f"no deployment named '{name}'." + (f" Did you mean '{near}'?" if near else ""),
            fix="run `argosy list` to see your deployments",
        )
    return dep


def destroy(s: Session, name: str, now: float) -> Deployment:
    """Mark for destruction; the reconciler drains and cleans up. Idempotent while it runs."""
    dep = get(s, name)
    transition(s, dep, "destroying", "destroy requested", now)
    return dep


def describe(s: Session, dep: Deployment) -> dict[str, Any]:
    replicas = list(
        s.scalars(select(Replica).where(Replica.deployment_id == dep.id).order_by(Replica.created_at))
    )
    table, version = router_table(dep, replicas)
    routed = bool(dep.router_port and dep.state == "active" and table and version == dep.router_table_version)
    return {
        "id": dep.id,
        "name": dep.name,
        "model": dep.model,
        "engine": dep.engine,
        "provider": dep.provider,
        "state": dep.state,
        "desired_replicas": dep.replicas,
        "ready_replicas": sum(1 for r in replicas if r.state == "ready"),
        # Shown once the router holds the current ready set, so a client that sees it can use it.
        "endpoint": f"http://127.0.0.1:{dep.router_port}/v1" if routed else None,
        "offering": dep.spec.get("offering"),
        "router": {"pid": dep.router_pid, "port": dep.router_port},
        "created_at": dep.created_at,
        "cost": totals(s, dep.id),
        "replicas": [
            {
                "id": r.id,
                "state": r.state,
                "reason": r.reason,
                "node_id": r.node_id,
                "url": r.url,
                "price_per_hour": r.price_per_hour,
                "workload": {k: v for k, v in (r.workload or {}).items() if k != "log_tail"},
                "since": r.state_changed_at,
            }
            for r in replicas
        ],
    }
