"""REST for the catalog and placement: GET /catalog/gpus, GET /catalog/offerings, POST /plan.

No store access: offerings are the snapshot + cached live prices + what providers with the Offerings
capability report now. The server includes this router behind its auth dependency; it can replace
`offerings_dependency` through `app.dependency_overrides` to inject its own provider instances.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from argosy.catalog import (
    DEFAULT_TTL_S,
    Offering,
    is_stale,
    load_gpus,
    load_offerings,
    offering_key,
    price_age_s,
    select_offerings,
    size_model,
)
from argosy.core.config import load_settings
from argosy.core.errors import ArgosyError

router = APIRouter(prefix="/api/v1", tags=["catalog"])
log = logging.getLogger(__name__)

# Providers whose Offerings answer without network calls: this machine and the serverless providers'
# published list prices. The fake provider (a simulator) is left out: its invented prices would win.
LIVE_SOURCES_DEFAULT = ("local", "modal", "runpod-serverless", "baseten", "cloudrun")


def offerings_dependency() -> list[Offering]:
    """Snapshot + cached live prices + live offerings from providers that implement `Offerings`."""
    from argosy.providers.base import Offerings
    from argosy.providers.registry import PROVIDERS, get_provider

    settings = load_settings()
    live: list[Offering] = []
    for name in LIVE_SOURCES_DEFAULT:
        if name not in PROVIDERS.names():
            continue
        try:
            provider = get_provider(name, settings)
            if isinstance(provider, Offerings):
                live.extend(provider.offerings())
        except ArgosyError as exc:
            # One provider that cannot list its offerings must not take the catalog down with it.
            log.warning("%s live offerings unavailable: %s", name, exc.message)
    return load_offerings(settings, live=live)


def _error(exc: ArgosyError) -> JSONResponse:
    return JSONResponse(status_code=exc.http_status, content=exc.to_dict())


def _offering_json(o: Offering, now: datetime) -> dict[str, Any]:
    age = price_age_s(o, now)
    return {
        "key": offering_key(o),
        "provider": o.provider,
        "region": o.region,
        "instance_type": o.instance_type,
        "gpu": o.gpu,
        "gpu_count": o.gpu_count,
        "vcpus": o.vcpus,
        "ram_gb": o.ram_gb,
        "kind": o.kind,
        "tier": o.tier or None,
        "price_per_hour": o.price_per_hour,
        "per_second_billing": o.per_second_billing,
        "available": o.available,
        "source": o.source,
        "fetched_at": o.fetched_at,
        "age_s": int(age) if age is not None else None,
        "stale": is_stale(o, now, DEFAULT_TTL_S),
    }


@router.get("/catalog/gpus")
def catalog_gpus() -> list[dict[str, Any]]:
    """GPU specs: VRAM, architecture, bf16/fp8, TFLOPs, bandwidth, TDP, aliases, source."""
    return [s.to_dict() for s in load_gpus().specs.values()]


@router.get("/catalog/offerings", response_model=None)
def catalog_offerings(
    gpu: str | None = None,
    provider: str | None = None,
    kind: str | None = None,
    region: str | None = None,
    max_price: float | None = Query(None, ge=0),
    offerings: list[Offering] = Depends(offerings_dependency),
) -> list[dict[str, Any]] | JSONResponse:
    try:
        chosen = select_offerings(
            offerings, gpu=gpu, provider=provider, kind=kind, region=region, max_price=max_price
        )
    except ArgosyError as exc:
        return _error(exc)
    now = datetime.now(tz=UTC)
    chosen.sort(key=lambda o: (o.price_per_hour is None, o.price_per_hour or 0.0))
    return [_offering_json(o, now) for o in chosen]


class PlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    max_model_len: int | None = Field(None, ge=1)
    quantization: str | None = None
    concurrency: int = Field(1, ge=1)
    objective: str = "cost"
    kinds: list[str] = []
    providers: list[str] = []
    regions: list[str] = []
    exclude_regions: list[str] = []
    gpu: str | None = None
    max_price_per_hour: float | None = Field(None, ge=0)
    allow_cpu: bool | None = None
    priority: list[str] = []
    round_robin_index: int = Field(0, ge=0)
    max_fallbacks: int = Field(5, ge=0, le=50)


@router.post("/plan", response_model=None)
def plan(
    body: PlanBody, offerings: list[Offering] = Depends(offerings_dependency)
) -> dict[str, Any] | JSONResponse:
    """Size the model and place it: choice, ordered fallbacks, explanation (422 with fixes when nothing fits)."""
    from argosy.placement import PlacementRequest, place

    try:
        requirement = size_model(body.model, body.quantization, body.max_model_len, body.concurrency)
        request = PlacementRequest(
            requirement=requirement,
            gpu=body.gpu,
            kinds=tuple(body.kinds),
            providers=tuple(body.providers),
            regions=tuple(body.regions),
            exclude_regions=tuple(body.exclude_regions),
            max_price_per_hour=body.max_price_per_hour,
            allow_cpu=body.allow_cpu,
            priority=tuple(body.priority),
            round_robin_index=body.round_robin_index,
            max_fallbacks=body.max_fallbacks,
        )
        return place(request, offerings, body.objective).to_dict()
    except ArgosyError as exc:
        return _error(exc)
