"""The `fake` provider: in-memory instances driven by the injectable clock, with fault injection.

It is the base for simulation and for the tests of every reconciler: provisioning takes
`provision_delay_s` of clock time, `capacity` bounds concurrent instances (CapacityError past it),
`failure_rate` makes provisioning fail, `preemption_rate_per_hour` preempts running instances, and
tests can preempt or fail an instance on demand. State lives in the instance (no module globals);
share one FakeProvider between the reconciler and the test to observe it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from argosy.catalog.types import Offering
from argosy.core.clock import Clock, iso
from argosy.core.config import Settings
from argosy.core.errors import CapacityError, NotFoundError, ProviderError
from argosy.providers.base import (
    MANAGED_LABEL,
    CheckResult,
    Endpoint,
    EndpointRequest,
    Instance,
    InstanceRequest,
    Plan,
    UsageRecord,
)


@dataclass
class _FakeInstance:
    instance: Instance
    ready_at: float
    last_checked: float
    calls: list[str] = field(default_factory=list)


class FakeProvider:
    name = "fake"

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.cfg = settings.providers.fake
        self.clock = clock
        self._rng = random.Random(self.cfg.seed)
        self._instances: dict[str, _FakeInstance] = {}
        self._seq = 0
        self.log: list[tuple[str, str]] = []  # (call, instance id): what was asked of the provider
        self._endpoints: dict[str, Endpoint] = {}
        # Billing: off, the fake has no usage to report (callers estimate); a test turns it on and
        # bills buckets with `bill`, as a provider's billing API would report them.
        self.usage_api = False
        self._billed: dict[str, dict[float, UsageRecord]] = {}

    def offerings(self) -> list[Offering]:
        when = iso(self.clock.now())
        common = dict(
            provider="fake",
            region="fake-1",
            vcpus=8,
            ram_gb=64.0,
            source="fake provider config",
            fetched_at=when,
        )
        return [
            Offering(
                instance_type="fake.gpu",
                gpu="L4",
                gpu_count=1,
                kind="vm",
                price_per_hour=self.cfg.price_per_hour,
                **common,
            ),
            Offering(
                instance_type="fake.gpu.spot",
                gpu="L4",
                gpu_count=1,
                kind="spot",
                price_per_hour=self.cfg.price_per_hour / 3,
                **common,
            ),
        ]

    def preflight(self) -> list[CheckResult]:
        return [CheckResult("fake", True, "always ready")]

    def plan(self, request: InstanceRequest) -> Plan:
        return Plan(
            provider=self.name,
            action="provision",
            offering=request.offering,
            payload={
                "name": request.name,
                "instance_type": request.offering.instance_type,
                "kind": request.offering.kind,
                "labels": {MANAGED_LABEL: "true", **request.labels},
            },
            estimated_cost_per_hour=request.offering.price_per_hour,
        )

    def _live(self) -> list[_FakeInstance]:
        return [f for f in self._instances.values() if f.instance.state in ("provisioning", "running")]

    def provision(self, plan: Plan) -> Instance:
        now = self.clock.now()
        if len(self._live()) >= self.cfg.capacity:
            raise CapacityError(
                f"fake-1 has no capacity for {plan.payload['instance_type']}",
                fix="try another offering",
                provider=self.name,
            )
        if self.cfg.failure_rate and self._rng.random() < self.cfg.failure_rate:
            raise ProviderError("fake provisioning failure (injected)", provider=self.name)
        self._seq += 1
        iid = f"fake-{self._seq:05d}"
        inst = Instance(
            provider=self.name,
            instance_id=iid,
            name=str(plan.payload["name"]),
            state="provisioning",
            region="fake-1",
            address=f"10.0.0.{self._seq % 250 + 1}",
            labels=dict(plan.payload["labels"]),
            price_per_hour=plan.estimated_cost_per_hour,
        )
        self._instances[iid] = _FakeInstance(
            inst, ready_at=now + self.cfg.provision_delay_s, last_checked=now
        )
        self.log.append(("provision", iid))
        return replace(inst)

    def _advance(self, f: _FakeInstance) -> None:
        now = self.clock.now()
        inst = f.instance
        if inst.state == "provisioning" and now >= f.ready_at:
            inst.state = "running"
        if inst.state == "running" and self.cfg.preemption_rate_per_hour and inst.labels.get("kind") != "vm":
            elapsed_h = max(0.0, now - f.last_checked) / 3600
            # Poisson: P(at least one preemption in the elapsed time).
            if self._rng.random() < 1 - math.exp(-self.cfg.preemption_rate_per_hour * elapsed_h):
                inst.state = "preempted"
                inst.reason = "spot capacity reclaimed (injected)"
        f.last_checked = now

    def status(self, instance_id: str) -> Instance:
        f = self._instances.get(instance_id)
        if f is None:
            raise NotFoundError(f"fake instance {instance_id} does not exist")
        self._advance(f)
        return replace(f.instance)

    def list(self) -> list[Instance]:
        for f in self._instances.values():
            self._advance(f)
        return [replace(f.instance) for f in self._live()]

    def terminate(self, instance_id: str) -> None:
        f = self._instances.get(instance_id)
        if f is not None and f.instance.state != "terminated":
            f.instance.state = "terminated"
            self.log.append(("terminate", instance_id))

    # -- Endpoints (serverless) ---------------------------------------------------------------
    def plan_endpoint(self, request: EndpointRequest) -> Plan:
        return Plan(
            provider=self.name,
            action="deploy",
            offering=request.offering,
            payload={
                "name": request.name,
                "model": request.model,
                "min_workers": request.min_workers,
                "max_workers": request.max_workers,
                "labels": {MANAGED_LABEL: "true"},
            },
            estimated_cost_per_hour=self.cfg.endpoint_price_per_second * 3600,
        )

    def deploy(self, plan: Plan) -> Endpoint:
        if not self.cfg.endpoint_url:
            raise ProviderError(
                "the fake provider's endpoints need a URL to answer at",
                fix="set providers.fake.endpoint_url (an OpenAI-compatible server you run)",
                provider=self.name,
            )
        self._seq += 1
        ep = Endpoint(
            provider=self.name,
            endpoint_id=f"fake-ep-{self._seq:05d}",
            name=str(plan.payload["name"]),
            state="ready",
            url=self.cfg.endpoint_url,
            auth_header={"Authorization": f"Bearer fake-endpoint-token-{self._seq}"},
            price_per_second=self.cfg.endpoint_price_per_second,
        )
        self._endpoints[ep.endpoint_id] = ep
        self.log.append(("deploy", ep.endpoint_id))
        return replace(ep)

    def endpoint_status(self, endpoint_id: str) -> Endpoint:
        ep = self._endpoints.get(endpoint_id)
        if ep is None:
            raise NotFoundError(f"fake endpoint {endpoint_id} does not exist")
        return replace(ep)

    def destroy(self, endpoint_id: str) -> None:
        ep = self._endpoints.get(endpoint_id)
        if ep is not None and ep.state != "destroyed":
            ep.state = "destroyed"
            self.log.append(("destroy", endpoint_id))

    usage_source = "fake billing records"

    def endpoint_usage(self, endpoint_id: str, since: float, until: float) -> list[UsageRecord] | None:
        self.log.append(("usage", endpoint_id))
        if not self.usage_api:
            return None
        buckets = self._billed.get(endpoint_id, {})
        return [r for _, r in sorted(buckets.items()) if r.end_ts > since and r.start_ts < until]

    def bill(
        self, endpoint_id: str, start_ts: float, end_ts: float, cost_usd: float, seconds: float | None
    ) -> None:
        """Set one billing bucket's running total (a later call for the same bucket replaces it)."""
        self._billed.setdefault(endpoint_id, {})[start_ts] = UsageRecord(start_ts, end_ts, cost_usd, seconds)

    # -- fault injection for tests and the simulator ------------------------------------------
    def preempt(self, instance_id: str, reason: str = "spot capacity reclaimed") -> None:
        f = self._instances[instance_id]
        f.instance.state = "preempted"
        f.instance.reason = reason

    def fail(self, instance_id: str, reason: str = "hardware failure") -> None:
        f = self._instances[instance_id]
        f.instance.state = "failed"
        f.instance.reason = reason
