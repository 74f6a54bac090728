"""Vast.ai REST API v0 (https://docs.vast.ai/api-reference): the one Vast.ai client.

Endpoints used: GET /users/current/, POST /bundles/ (search offers), PUT /asks/{offer_id}/ (create an
instance from an offer), GET /instances/, GET /instances/{id}/, DELETE /instances/{id}/.
Errors come back as {"success": false, "error": "<code>", "msg": "<text>"}.
"""

from __future__ import annotations

from typing import Any

from argosy.core.errors import CapacityError, NotFoundError, ProviderAuthError, ProviderError, QuotaError
from argosy.providers.clients.http import BearerApiClient

DEFAULT_BASE_URL = "https://console.vast.ai/api/v0"
KEYS_URL = "https://cloud.vast.ai/manage-keys/"

_CAPACITY_CODES = ("no_such_ask", "ask_not_available", "already_rented")


def classify(status: int, body: Any, text: str) -> ProviderError | None:
    if not isinstance(body, dict):
        return None
    code = str(body.get("error", ""))
    message = str(body.get("msg") or body.get("message") or text)
    msg = f"vast: {message}" + (f" ({code})" if code else "")
    low = (code + " " + message).lower()
    if code in _CAPACITY_CODES or "no longer available" in low or "already rented" in low:
        # Vast offers are single machines: when one is taken, placement must pick another offer.
        return CapacityError(msg, fix="pick another offer (Vast offers are single machines)", provider="vast")
    if "credit" in low or "balance" in low:
        return QuotaError(msg, fix="add credit at https://cloud.vast.ai/billing/", provider="vast")
    if status in (401, 403) or "auth" in low or "api key" in low:
        return ProviderAuthError(msg, fix=f"create a new key at {KEYS_URL}", provider="vast")
    if status == 404:
        return NotFoundError(msg, fix="run `argosy nodes list` to see what exists")
    return ProviderError(msg, provider="vast")


class VastClient(BearerApiClient):
    PROVIDER = "vast"
    DEFAULT_URL = DEFAULT_BASE_URL
    classify = staticmethod(classify)

    def current_user(self) -> dict[str, Any]:
        return self._api.request("GET", "/users/current/")

    def search_offers(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        # A search changes nothing, so it may be retried like a GET.
        return self._api.request("POST", "/bundles/", json_body=query, idempotent=True)["offers"]

    def create_instance(self, offer_id: int, payload: dict[str, Any]) -> int:
        out = self._api.request("PUT", f"/asks/{offer_id}/", json_body=payload)
        if not out or not out.get("success", False) or "new_contract" not in out:
            raise classify(200, out, str(out)) or ProviderError(
                f"vast: create failed: {out}", provider="vast"
            )
        return int(out["new_contract"])

    def instances(self) -> list[dict[str, Any]]:
        return self._api.request("GET", "/instances/")["instances"]

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        out = self._api.request("GET", f"/instances/{instance_id}/")
        inst = out.get("instances") if isinstance(out, dict) else None
        return inst or None  # Vast answers {"instances": null} for an id that is gone

    def destroy(self, instance_id: str) -> None:
        self._api.request("DELETE", f"/instances/{instance_id}/")
