"""A deployment's serverless fallback spend in the ledger: measured from the provider's billing API
where it has one, else estimated from the router's busy seconds — on the fake clock, the fake
provider's endpoints and in-memory routers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from argosy.core.config import Settings
from argosy.core.errors import ProviderError
from argosy.serve import deployments as dep_svc
from argosy.serve.serverless_usage import POLL_S
from argosy.store.ledger import SERVERLESS, serverless_basis, serverless_totals, totals
from argosy.store.models import Deployment, Event, LedgerEntry
from tests.conftest import write_model_config
from tests.spine.test_reconciler import World

PRICE = 0.0005  # the fake endpoint's list price per second (settings default)


@pytest.fixture
def w(settings: Settings, tmp_path: Path) -> World:
    world = World(
        settings,
        f"sqlite:///{tmp_path / 's.db'}",
        provision_delay_s=5,
        endpoint_url="http://10.9.9.9:8000/v1",
    )
    model_dir = write_model_config(Path(settings.home) / "model")
    req = dep_svc.validate(
        dep_svc.DeployRequest(
            str(model_dir), "m", "fake", "llamacpp", 1, fallback="fake", fallback_model="org/tiny"
        ),
        ["llamacpp"],
        "llamacpp",
    )
    plan = dep_svc.plan_deployment(req, lambda _n: world.fake, {}, "http://server", settings=settings)
    with world.store.session() as s:
        dep_svc.create(s, req, plan, world.clock.now())
    return world


def _endpoint_id(w: World) -> str:
    return next(b["name"] for b in w.routers.tables["m"] if b["tier"] == "fallback")


def _report(start_id: str, busy: dict[str, float]) -> dict[str, object]:
    return {
        "start_id": start_id,
        "started_at": 0.0,
        "keys": {},
        "backends": {},
        "busy_s": busy,
        "total": {"requests": 1, "prompt_tokens": 0, "completion_tokens": 0},
    }


def _rows(w: World) -> list[LedgerEntry]:
    with w.store.session() as s:
        rows = list(s.scalars(select(LedgerEntry).where(LedgerEntry.resource_kind == SERVERLESS)))
        s.expunge_all()
        return rows


def _billing(w: World) -> dict[str, dict[str, object]]:
    with w.store.session() as s:
        return dict(s.scalars(select(Deployment)).one().spec["fallback_billing"])


def test_without_billed_usage_the_router_busy_seconds_are_an_estimate(w: World) -> None:
    w.run(2)
    ep = _endpoint_id(w)
    # The fake has no billing data: one event says the spend is estimated, and not once per step.
    assert _billing(w)[ep]["basis"] == "estimate"
    w.routers.reports["m"] = _report("r1", {ep: 10.0, "rep-primary": 99.0})
    w.run(3)
    [row] = _rows(w)
    assert serverless_basis(row) == "estimate" and row.resource_id == ep
    assert row.seconds == 10.0 and row.cost_usd == pytest.approx(10.0 * PRICE)
    assert row.price_per_hour == pytest.approx(PRICE * 3600) and row.deployment_id is not None
    w.run(5)  # the same report again and again: nothing changes
    assert [(r.seconds, r.cost_usd) for r in _rows(w)] == [(10.0, row.cost_usd)]
    w.routers.reports["m"] = _report("r1", {ep: 7.0})  # a late, older answer: never lowers it
    w.run(1)
    assert [r.seconds for r in _rows(w)] == [10.0]
    w.routers.reports["m"] = _report("r1", {ep: 12.5})
    w.run(1)
    assert [r.seconds for r in _rows(w)] == [12.5]
    # The router restarted: its counters begin at zero under a new start id, a new row.
    w.routers.reports["m"] = _report("r2", {ep: 4.0})
    w.run(1)
    assert sorted(r.seconds for r in _rows(w)) == [4.0, 12.5]
    with w.store.session() as s:
        sv = serverless_totals(s)
        assert sv["seconds"] == 16.5 and sv["estimate_usd"] == pytest.approx(16.5 * PRICE)
        assert sv["measured_usd"] == 0.0
        # The ledger total includes the fallback's spend.
        assert totals(s)["cost_usd"] >= sv["cost_usd"]
        notes = [e.reason for e in s.scalars(select(Event)) if "no billed usage" in e.reason]
    assert len(notes) == 1 and "estimated from the router's busy seconds" in notes[0]


def test_an_older_router_without_busy_seconds_records_nothing(w: World) -> None:
    w.run(2)
    report = _report("r1", {})
    del report["busy_s"]
    w.routers.reports["m"] = report
    w.run(3)
    assert _rows(w) == []


def test_billed_usage_is_measured_per_bucket_and_polled_sparingly(w: World) -> None:
    w.fake.usage_api = True
    w.run(2)
    ep = _endpoint_id(w)
    assert _billing(w)[ep]["basis"] == "measured"
    polls = w.fake.log.count(("usage", ep))
    assert polls == 1
    t0 = w.clock.now() // 3600 * 3600
    w.fake.bill(ep, t0, t0 + 3600, cost_usd=0.05, seconds=100.0)
    # Busy seconds from the router are not used for a measured endpoint (no double count).
    w.routers.reports["m"] = _report("r1", {ep: 500.0})
    w.run(POLL_S - 10)
    assert w.fake.log.count(("usage", ep)) == 1 and _rows(w) == []  # not asked again before POLL_S
    w.run(20)
    assert w.fake.log.count(("usage", ep)) == 2
    [row] = _rows(w)
    assert serverless_basis(row) == "measured" and "fake billing records" in row.offering_key
    assert (row.start_ts, row.end_ts, row.seconds, row.cost_usd) == (t0, t0 + 3600, 100.0, 0.05)
    # The open bucket grew, a new one began: the first row is rewritten, not added to.
    w.fake.bill(ep, t0, t0 + 3600, cost_usd=0.08, seconds=160.0)
    w.fake.bill(ep, t0 + 3600, t0 + 7200, cost_usd=0.01, seconds=20.0)
    w.run(t0 + 3600 - w.clock.now() + POLL_S + 60, step=60)  # into the second bucket, and a poll there
    rows = sorted(_rows(w), key=lambda r: r.start_ts)
    assert [(r.seconds, r.cost_usd) for r in rows] == [(160.0, 0.08), (20.0, 0.01)]
    w.run(POLL_S, step=60)  # asked again, the same figures: nothing changes
    assert len(_rows(w)) == 2
    with w.store.session() as s:
        sv = serverless_totals(s)
    assert sv["measured_usd"] == pytest.approx(0.09) and sv["estimate_usd"] == 0.0


def test_a_bucket_without_seconds_is_priced_back_to_seconds(w: World) -> None:
    w.fake.usage_api = True
    w.run(2)
    ep = _endpoint_id(w)
    t0 = w.clock.now() // 3600 * 3600
    w.fake.bill(ep, t0, t0 + 3600, cost_usd=0.01, seconds=None)  # Modal reports cost only
    w.run(POLL_S + 1)
    [row] = _rows(w)
    assert row.cost_usd == 0.01 and row.seconds == pytest.approx(0.01 / PRICE)


def test_a_failing_billing_api_is_noted_once_and_retried_later(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w.fake.usage_api = True
    calls: list[str] = []

    def broken(endpoint_id: str, since: float, until: float) -> None:
        calls.append(endpoint_id)
        raise ProviderError("billing is down", provider="fake")

    monkeypatch.setattr(w.fake, "endpoint_usage", broken)
    w.run(2 * POLL_S + 5)
    assert len(calls) == 3  # at creation, then once per POLL_S: never once per step
    with w.store.session() as s:
        notes = [e.reason for e in s.scalars(select(Event)) if "billing is down" in e.reason]
    assert len(notes) == 1 and "reading billed usage" in notes[0]
    assert _billing(w)[_endpoint_id(w)]["basis"] == "measured"  # still measured: figures come later


def test_destroy_takes_the_last_figures_and_keeps_the_rows(w: World) -> None:
    w.run(2)
    ep = _endpoint_id(w)
    w.routers.reports["m"] = _report("r1", {ep: 30.0})
    w.run(1)
    with w.store.session() as s:
        dep_svc.destroy(s, "m", w.clock.now())
    w.routers.reports["m"] = _report("r1", {ep: 42.0})  # traffic after the last pull: taken at destroy
    w.run(1)
    assert ("destroy", ep) in w.fake.log
    assert [r.seconds for r in _rows(w)] == [42.0]
    billing = _billing(w)
    assert billing[ep]["destroyed_at"] is not None
    w.routers.reports["m"] = _report("r1", {ep: 50.0})  # tries against a destroyed endpoint: not billed
    w.run(90)  # the replica, still provisioning, drains
    assert [r.seconds for r in _rows(w)] == [42.0]
    with w.store.session() as s:
        events = [(e.kind, e.to_state, e.reason) for e in s.scalars(select(Event))]
        assert s.scalars(select(Deployment)).one().state == "destroyed", events[-8:]


def test_measured_destroy_polls_once_more_before_the_endpoint_goes(w: World) -> None:
    w.fake.usage_api = True
    w.run(2)
    ep = _endpoint_id(w)
    t0 = w.clock.now() // 3600 * 3600
    w.fake.bill(ep, t0, t0 + 3600, cost_usd=0.02, seconds=40.0)
    with w.store.session() as s:
        dep_svc.destroy(s, "m", w.clock.now())
    w.run(1)  # well inside POLL_S, yet the bucket is read before the destroy
    [row] = _rows(w)
    assert row.cost_usd == 0.02 and serverless_basis(row) == "measured"


def test_the_ledger_api_splits_fallback_spend_by_basis(api) -> None:  # type: ignore[no-untyped-def]
    from argosy.store.ledger import record_serverless

    client, state = api
    with state.store.session() as s:
        s.add(
            Deployment(
                id="dep_1",
                name="m",
                model="org/tiny",
                engine="llamacpp",
                provider="fake",
                replicas=1,
                state="active",
                spec={},
                created_at=0.0,
                updated_at=0.0,
            )  # fmt: skip
        )
        for basis, cost in (("measured", 0.25), ("estimate", 0.05)):
            record_serverless(
                s, deployment_id="dep_1", endpoint_id="ep-1", provider="fake", basis=basis, detail="x",
                start_ts=0.0, end_ts=10.0, seconds=100.0, cost_usd=cost, price_per_second=PRICE,
            )  # fmt: skip
        s.commit()
    body = client.get("/api/v1/ledger").json()
    [row] = body["deployments"]
    assert row["serverless"] == {
        "seconds": 200.0,
        "cost_usd": pytest.approx(0.30),
        "measured_usd": 0.25,
        "estimate_usd": 0.05,
    }
    assert row["cost_usd"] == pytest.approx(0.30)  # part of the deployment's cost
    assert body["total"]["serverless"]["measured_usd"] == 0.25
