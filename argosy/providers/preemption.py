"""The node's own view of preemption: the cloud's instance-metadata notice, for the agent to poll.

The control plane sees preemption through `Instances.status()` (state `preempted`), but only after
the fact. AWS and GCP also tell the machine itself shortly before (AWS: about two minutes; GCP: about
30 seconds), which lets the agent drain and report `preempted` while it can still speak. The agent
learns its provider from `ARGOSY_PROVIDER` in its environment file (written by the bootstrap).
RunPod, Vast.ai, Lambda and Linode publish no such notice; their preemption is seen from the API.
"""

from __future__ import annotations

import httpx

AWS_IMDS = "http://169.254.169.254"
GCP_METADATA = "http://metadata.google.internal"
NOTICE_PROVIDERS = ("aws", "gcp")


def preemption_notice(provider: str, *, base_url: str | None = None, timeout_s: float = 1.0) -> str | None:
    """A reason string if this machine has been told it will be reclaimed, else None.

    Never raises for network trouble: a metadata service that does not answer means "no notice"
    (the agent polls again; the control plane still sees the preemption through the API).
    """
    try:
        with httpx.Client(timeout=timeout_s) as http:
            if provider == "aws":
                return _aws(http, base_url or AWS_IMDS)
            if provider == "gcp":
                return _gcp(http, base_url or GCP_METADATA)
    except httpx.HTTPError:
        return None
    return None


def _aws(http: httpx.Client, base: str) -> str | None:
    # IMDSv2: nodes are launched with HttpTokens=required, so a session token comes first.
    token = http.put(f"{base}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    if token.status_code != 200:
        return None
    r = http.get(
        f"{base}/latest/meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": token.text}
    )
    if r.status_code != 200:
        return None  # 404: no interruption scheduled
    try:
        action = r.json()
    except ValueError:
        return "aws spot interruption notice"
    return (
        f"aws spot interruption notice: {action.get('action', 'terminate')} at {action.get('time', 'soon')}"
    )


def _gcp(http: httpx.Client, base: str) -> str | None:
    r = http.get(f"{base}/computeMetadata/v1/instance/preempted", headers={"Metadata-Flavor": "Google"})
    if r.status_code == 200 and r.text.strip().upper() == "TRUE":
        return "gcp preemption notice (instance/preempted is TRUE)"
    return None
