"""Lambda Cloud REST API v1 (https://docs-api.lambda.ai/api/cloud): the one Lambda client.

Endpoints used: GET /instance-types, GET /instances, GET /instances/{id},
POST /instance-operations/launch, POST /instance-operations/terminate, GET/POST /ssh-keys.
Errors come back as {"error": {"code": "...", "message": "...", "suggestion": "..."}}.
"""

from __future__ import annotations

from typing import Any

from argosy.core.errors import CapacityError, NotFoundError, ProviderAuthError, ProviderError, QuotaError
from argosy.providers.clients.http import BearerApiClient

DEFAULT_BASE_URL = "https://cloud.lambda.ai/api/v1"
KEYS_URL = "https://cloud.lambda.ai/api-keys/cloud-api"


def classify(status: int, body: Any, text: str) -> ProviderError | None:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None
    code = str(err.get("code", ""))
    msg = f"lambda: {err.get('message', text)} ({code})"
    suggestion = err.get("suggestion") or None
    if code.endswith("insufficient-capacity"):
        return CapacityError(msg, fix=suggestion or "try another region or instance type", provider="lambda")
    if "quota" in code:
        return QuotaError(
            msg, fix=suggestion or "ask Lambda support to raise your instance limit", provider="lambda"
        )
    if code in ("global/invalid-api-key", "global/account-inactive") or status in (401, 403):
        return ProviderAuthError(msg, fix=suggestion or f"create a new key at {KEYS_URL}", provider="lambda")
    if code == "global/object-does-not-exist" or status == 404:
        return NotFoundError(msg, fix=suggestion or "run `argosy nodes list` to see what exists")
    return ProviderError(msg, fix=suggestion, provider="lambda")


class LambdaClient(BearerApiClient):
    PROVIDER = "lambda"
    DEFAULT_URL = DEFAULT_BASE_URL
    classify = staticmethod(classify)

    def instance_types(self) -> dict[str, Any]:
        return self._api.request("GET", "/instance-types")["data"]

    def instances(self) -> list[dict[str, Any]]:
        return self._api.request("GET", "/instances")["data"]

    def instance(self, instance_id: str) -> dict[str, Any]:
        return self._api.request("GET", f"/instances/{instance_id}")["data"]

    def launch(self, payload: dict[str, Any]) -> list[str]:
        return self._api.request("POST", "/instance-operations/launch", json_body=payload)["data"][
            "instance_ids"
        ]

    def terminate(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        body = {"instance_ids": instance_ids}
        return self._api.request("POST", "/instance-operations/terminate", json_body=body)["data"][
            "terminated_instances"
        ]

    def ssh_keys(self) -> list[dict[str, Any]]:
        return self._api.request("GET", "/ssh-keys")["data"]

    def add_ssh_key(self, name: str, public_key: str) -> dict[str, Any]:
        return self._api.request("POST", "/ssh-keys", json_body={"name": name, "public_key": public_key})[
            "data"
        ]
