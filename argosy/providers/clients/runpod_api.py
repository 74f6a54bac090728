"""RunPod GraphQL API (https://docs.runpod.io/sdks/graphql/manage-pods): the one RunPod pod client.

GraphQL, not REST v1: REST v1 was retired on 2026-11-15 and REST v2's pod schema is still in beta,
while the GraphQL pod mutations (`podFindAndDeployOnDemand`, `podRentInterruptable`, `podTerminate`)
and `gpuTypes` prices are the documented, stable interface. Everything goes through variables, never
string interpolation, so names and scripts cannot inject GraphQL.

GraphQL answers errors with HTTP 200 and an `errors` list; `check_errors` types them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from argosy.core.errors import CapacityError, ProviderAuthError, ProviderError, QuotaError
from argosy.providers.clients.http import BearerApiClient

DEFAULT_URL = "https://api.runpod.io"  # GraphQL lives at /graphql
KEYS_URL = "https://www.runpod.io/console/user/settings"

POD_FIELDS = """
  id name desiredStatus podType costPerHr gpuCount imageName env lastStatusChange
  machine { gpuDisplayName }
  runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }
"""
Q_MYSELF = "query Myself { myself { id pods {" + POD_FIELDS + "} } }"
Q_USER = "query User { myself { id } }"
Q_POD = "query Pod($input: PodFilter!) { pod(input: $input) {" + POD_FIELDS + "} }"
Q_GPU_TYPES = """query GpuTypes { gpuTypes {
  id displayName memoryInGb secureCloud communityCloud securePrice communityPrice secureSpotPrice communitySpotPrice
} }"""
M_DEPLOY = (
    "mutation Deploy($input: PodFindAndDeployOnDemandInput!) "
    "{ podFindAndDeployOnDemand(input: $input) { id name desiredStatus costPerHr } }"
)
M_RENT = (
    "mutation Rent($input: PodRentInterruptableInput!) "
    "{ podRentInterruptable(input: $input) { id name desiredStatus costPerHr } }"
)
M_TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"

# RunPod's messages are the only signal: these phrases are the ones its API returns for each case.
_CAPACITY = ("no longer any instances available", "no instances available", "does not have the resources")
_QUOTA = ("insufficient balance", "not enough balance", "maximum number of", "spend limit")
_AUTH = ("unauthorized", "api key", "not authenticated", "permission")


def classify_message(message: str) -> ProviderError:
    low = message.lower()
    msg = f"runpod: {message}"
    if any(p in low for p in _CAPACITY):
        return CapacityError(msg, fix="try another GPU type or cloud type, or retry later", provider="runpod")
    if any(p in low for p in _QUOTA):
        return QuotaError(
            msg,
            fix="add credit or raise the limit at https://www.runpod.io/console/user/billing",
            provider="runpod",
        )
    if any(p in low for p in _AUTH):
        return ProviderAuthError(msg, fix=f"create a new API key at {KEYS_URL}", provider="runpod")
    return ProviderError(msg, provider="runpod")


def classify(status: int, body: Any, text: str) -> ProviderError | None:
    if isinstance(body, dict) and body.get("errors"):
        return classify_message("; ".join(str(e.get("message", e)) for e in body["errors"]))
    return None


class RunPodClient(BearerApiClient):
    PROVIDER = "runpod"
    DEFAULT_URL = DEFAULT_URL
    EXTRA_HEADERS = MappingProxyType({"Content-Type": "application/json"})
    classify = staticmethod(classify)

    def _gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        # Queries only read, so they may be retried after a 5xx or a timeout; mutations may not.
        out = self._api.request("POST", "/graphql", json_body=body, idempotent=query.startswith("query"))
        if not isinstance(out, dict):
            raise ProviderError("runpod: the API answered with an empty body", provider="runpod")
        err = classify(200, out, "")
        if err is not None:
            raise err
        return out.get("data") or {}

    def user(self) -> dict[str, Any]:
        return self._gql(Q_USER)["myself"]

    def pods(self) -> list[dict[str, Any]]:
        return self._gql(Q_MYSELF)["myself"]["pods"]

    def pod(self, pod_id: str) -> dict[str, Any] | None:
        """The pod, or None when it no longer exists (answered as null or as a 'not found' error)."""
        try:
            return self._gql(Q_POD, {"input": {"podId": pod_id}}).get("pod")
        except ProviderError as exc:
            if type(exc) is ProviderError and "not found" in exc.message.lower():
                return None
            raise

    def gpu_types(self) -> list[dict[str, Any]]:
        return self._gql(Q_GPU_TYPES)["gpuTypes"]

    def deploy(self, pod_input: dict[str, Any], interruptible: bool) -> dict[str, Any]:
        if interruptible:
            return self._gql(M_RENT, {"input": pod_input})["podRentInterruptable"]
        return self._gql(M_DEPLOY, {"input": pod_input})["podFindAndDeployOnDemand"]

    def terminate(self, pod_id: str) -> None:
        self._gql(M_TERMINATE, {"input": {"podId": pod_id}})
