"""The node's own view of preemption: the cloud's instance-metadata notice, for the agent to poll.

The control plane sees preemption through `Instances.status()` (state `preempted`), but only after
the fact. AWS and GCP also tell the machine itself shortly before (AWS: about two minutes; GCP: about
30 seconds), which lets the agent report it while it can still speak, so the server replaces the
replica before the VM dies. Providers that have such a notice implement the `SpotNotice` capability
with the functions below; the agent learns its provider from `ARGOSY_PROVIDER` and that it is on a
spot machine from `ARGOSY_PREEMPTIBLE=1` (both written by the bootstrap). RunPod, Vast.ai, Lambda and
Linode publish no such notice; their preemption is seen from the API.

Documented endpoints:
- AWS: IMDSv2 session token `PUT /latest/api/token`, then `GET /latest/meta-data/spot/instance-action`
  (404 until an interruption is scheduled; then `{"action": "terminate", "time": "..."}`).
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html
- GCP: `GET /computeMetadata/v1/instance/preempted` with `Metadata-Flavor: Google` (`TRUE` once the
  VM is being preempted). https://cloud.google.com/compute/docs/instances/create-use-preemptible
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from argosy.core.errors import ArgosyError
from argosy.providers.base import SpotNotice

AWS_IMDS = "http://169.254.169.254"
GCP_METADATA = "http://metadata.google.internal"
# Points the notice check at another metadata server (tests; a proxy on the node).
METADATA_URL_ENV = "ARGOSY_METADATA_URL"


def aws_spot_notice(base_url: str = AWS_IMDS, timeout_s: float = 1.0) -> str | None:
    """A reason string if AWS scheduled this spot instance's interruption, else None. Never raises."""
    try:
        with httpx.Client(timeout=timeout_s) as http:
            # IMDSv2: nodes are launched with HttpTokens=required, so a session token comes first.
            token = http.put(
                f"{base_url}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
            )
            if token.status_code != 200:
                return None
            r = http.get(
                f"{base_url}/latest/meta-data/spot/instance-action",
                headers={"X-aws-ec2-metadata-token": token.text},
            )
    except httpx.HTTPError:
        # A metadata service that does not answer means "no notice": the agent polls again, and the
        # control plane still sees the preemption through the API.
        return None
    if r.status_code != 200:
        return None  # 404: no interruption scheduled
    try:
        action = r.json()
    except ValueError:
        return "aws spot interruption notice"
    return (
        f"aws spot interruption notice: {action.get('action', 'terminate')} at {action.get('time', 'soon')}"
    )


def gcp_preemption_notice(base_url: str = GCP_METADATA, timeout_s: float = 1.0) -> str | None:
    """A reason string if GCP is preempting this VM, else None. Never raises."""
    try:
        with httpx.Client(timeout=timeout_s) as http:
            r = http.get(
                f"{base_url}/computeMetadata/v1/instance/preempted", headers={"Metadata-Flavor": "Google"}
            )
    except httpx.HTTPError:
        return None
    if r.status_code == 200 and r.text.strip().upper() == "TRUE":
        return "gcp preemption notice (instance/preempted is TRUE)"
    return None


def spot_notice_poller(provider: str, settings: Any) -> Callable[[], str | None] | None:
    """The agent's notice check for `provider`, through its SpotNotice capability; None if it has none."""
    from argosy.core.clock import SystemClock
    from argosy.providers.registry import PROVIDERS

    try:
        cls = PROVIDERS.load(provider)
    except ArgosyError:
        return None
    p = cls(settings=settings, clock=SystemClock())
    if not isinstance(p, SpotNotice):
        return None
    return p.spot_notice
