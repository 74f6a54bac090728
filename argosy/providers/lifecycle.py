"""What callers do around the capability interfaces: fall back on capacity, reap silent nodes, check all.

- `provision_with_fallback`: plan and provision the first offering that has capacity, in the order
  placement ranked them. A CapacityError moves on to the next offering; a QuotaError skips every
  later offering of the same provider and region (the quota will not change between attempts);
  anything else (auth, bad request) stops, because the next offering would fail the same way.
- `reap_unregistered`: terminate nodes whose agent never registered within the deadline, so a node
  whose bootstrap failed never stays up billing.
- `preflight_all`: every registered provider's preflight, for `argosy check`'s one table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from argosy.core.errors import ArgosyError, CapacityError, QuotaError
from argosy.providers.base import CheckResult, Instance, InstanceRequest, Instances, Plan, Preflight

ProviderLookup = Callable[[str], Any]  # provider name -> provider object (e.g. registry.get_provider)


@dataclass
class Attempt:
    offering_key: str
    error: str  # "" when it succeeded
    kind: str = ""  # "capacity" | "quota" | "skipped" | ""


@dataclass
class FallbackResult:
    instance: Instance
    plan: Plan
    attempts: list[Attempt] = field(default_factory=list)


def provision_with_fallback(
    requests: Sequence[InstanceRequest], provider_for: ProviderLookup
) -> FallbackResult:
    """Provision the first request (one per ranked offering) that gets capacity."""
    attempts: list[Attempt] = []
    over_quota: set[tuple[str, str]] = set()
    for req in requests:
        off = req.offering
        if (off.provider, off.region) in over_quota:
            attempts.append(Attempt(off.key, "quota exhausted earlier in this attempt", "skipped"))
            continue
        provider = provider_for(off.provider)
        if not isinstance(provider, Instances):
            attempts.append(
                Attempt(off.key, f"provider '{off.provider}' cannot provision instances", "skipped")
            )
            continue
        plan = provider.plan(req)
        try:
            instance = provider.provision(plan)
        except CapacityError as exc:
            attempts.append(Attempt(off.key, exc.message, "capacity"))
            continue
        except QuotaError as exc:
            attempts.append(Attempt(off.key, exc.message, "quota"))
            over_quota.add((off.provider, off.region))
            continue
        attempts.append(Attempt(off.key, ""))
        return FallbackResult(instance, plan, attempts)
    tried = (
        "\n  ".join(f"{a.offering_key}: {a.kind or 'error'}: {a.error}" for a in attempts) or "nothing to try"
    )
    raise CapacityError(
        f"no offering had capacity:\n  {tried}",
        fix="widen the placement (more providers, regions or GPU types), or retry later",
    )


@dataclass(frozen=True)
class LaunchedNode:
    provider: str
    instance_id: str
    launched_at: float  # epoch seconds, from the injectable clock
    registered: bool


def reap_unregistered(
    nodes: Iterable[LaunchedNode], provider_for: ProviderLookup, now: float, deadline_s: float = 900.0
) -> list[LaunchedNode]:
    """Terminate nodes still unregistered `deadline_s` after launch; return the ones terminated.

    Idempotent: terminating a node that is already gone is not an error, so a reconciler can call
    this every step. 15 minutes covers driver installation plus the pip install of Argosy.
    """
    reaped = []
    for node in nodes:
        if node.registered or now - node.launched_at < deadline_s:
            continue
        provider_for(node.provider).terminate(node.instance_id)
        reaped.append(node)
    return reaped


def preflight_all(names: Iterable[str], provider_for: ProviderLookup) -> list[tuple[str, CheckResult]]:
    """(provider, check) rows for every provider that implements Preflight; never raises per provider."""
    rows: list[tuple[str, CheckResult]] = []
    for name in names:
        try:
            provider = provider_for(name)
        except ArgosyError as exc:  # e.g. a missing SDK: the registry's install hint is the fix
            rows.append((name, CheckResult("installed", False, exc.message, fix=exc.fix)))
            continue
        if not isinstance(provider, Preflight):
            continue
        try:
            rows.extend((name, c) for c in provider.preflight())
        except ArgosyError as exc:
            rows.append((name, CheckResult("preflight", False, exc.message, fix=exc.fix)))
    return rows
