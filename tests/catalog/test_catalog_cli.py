"""`argosy gpus`, `argosy plan`, `argosy catalog refresh|status` through Typer, on a private home."""

from __future__ import annotations

import csv
import io
import json

import pytest
import typer
from typer.testing import CliRunner

from argosy.cli.catalog_cmd import register
from argosy.core.errors import ConfigError, NotFoundError
from argosy.placement import NoPlacementError


@pytest.fixture
def app(cat_settings) -> typer.Typer:  # type: ignore[no-untyped-def]
    a = typer.Typer()
    register(a)
    return a


runner = CliRunner()


def test_gpus_json_has_age_source_and_stale(app) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["gpus", "--gpu", "4090", "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and {r["gpu"] for r in rows} == {"RTX4090"}
    assert [r["price_per_hour"] for r in rows] == sorted(r["price_per_hour"] for r in rows)
    assert all(r["source"] and r["fetched_at"] for r in rows)
    assert all(r["stale"] for r in rows if r["origin"] == "snapshot")  # transcribed months ago


def test_gpus_includes_the_local_machine(app) -> None:  # type: ignore[no-untyped-def]
    rows = json.loads(runner.invoke(app, ["gpus", "--kind", "local", "-o", "json"]).output)
    cpu = [r for r in rows if r["gpu"] is None]
    assert cpu and cpu[0]["provider"] == "local" and cpu[0]["vcpus"] >= 1 and not cpu[0]["stale"]


def test_gpus_csv_and_filters(app) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app, ["gpus", "--provider", "aws", "--kind", "spot", "--max-price", "1", "-o", "csv"]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and all(
        r["provider"] == "aws" and r["kind"] == "spot" and float(r["price_per_hour"]) <= 1 for r in rows
    )


def test_gpus_table_and_specs(app) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["gpus", "--region", "us-central1"])
    assert result.exit_code == 0 and "stale" in result.output and "gcp" in result.output
    specs = json.loads(runner.invoke(app, ["gpus", "--specs", "-o", "json"]).output)
    assert len(specs) >= 23


def test_gpus_unknown_names_suggest(app) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["gpus", "--gpu", "H10"])
    assert (
        isinstance(result.exception, NotFoundError) and "Did you mean 'H100-SXM'" in result.exception.message
    )
    result = runner.invoke(app, ["gpus", "--provider", "lamda"])
    assert isinstance(result.exception, NotFoundError) and "Did you mean 'lambda'" in result.exception.message
    result = runner.invoke(app, ["gpus", "-o", "yaml"])
    assert isinstance(result.exception, ConfigError)


def test_plan_text_and_json(app) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["plan", "llama-3.1-8b", "--objective", "carbon", "--kind", "vm"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Chose ") and "gCO2/h" in result.output
    data = json.loads(
        runner.invoke(
            app, ["plan", "qwen2.5-7b", "-q", "awq", "--max-model-len", "4096", "-o", "json"]
        ).output
    )
    assert data["requirement"]["quantization"] == "awq" and data["requirement"]["max_model_len"] == 4096
    assert data["choice"]["price_per_hour"] is not None and len(data["fallbacks"]) == 5


def test_plan_tiny_model_on_local_cpu(app) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(runner.invoke(app, ["plan", "smollm2-135m", "--kind", "local", "-o", "json"]).output)
    assert data["choice"]["provider"] == "local" and data["choice"]["gpu"] is None


def test_plan_nothing_fits_and_list_models(app) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["plan", "llama-3.1-405b", "--kind", "serverless"])
    assert isinstance(result.exception, NoPlacementError)
    assert "tensor parallel 8" in (result.exception.fix or "") and "outside the current filters" in (
        result.exception.fix or ""
    )
    listing = json.loads(runner.invoke(app, ["plan", "--list-models", "-o", "json"]).output)
    assert len(listing) >= 30


def test_catalog_refresh_without_credentials(app, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for var in ("LAMBDA_API_KEY", "RUNPOD_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    result = runner.invoke(
        app, ["catalog", "refresh", "--provider", "lambda", "--provider", "runpod", "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    out = {o["provider"]: o for o in json.loads(result.output)}
    assert out["lambda"]["status"] == "snapshot" and "LAMBDA_API_KEY" in out["lambda"]["fix"]
    status = json.loads(runner.invoke(app, ["catalog", "status", "-o", "json"]).output)
    assert {r["provider"] for r in status} >= {"lambda", "local"}
