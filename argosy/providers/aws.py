"""AWS EC2 GPU instances (g4dn, g5, g6, p4d, p5), on-demand and spot, through boto3 (`argosy[aws]`).

Credentials: the standard AWS chain (`AWS_PROFILE`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
SSO, instance roles). Regions Argosy lists and prices: `ARGOSY_AWS_REGIONS` (comma separated,
default us-east-1,us-west-2). Nodes boot the AWS Deep Learning Base AMI (NVIDIA driver included),
resolved by EC2 itself from its public SSM parameter, so `plan()` stays pure. Nodes terminate (not
stop) on shutdown, so nothing bills after the agent or the user powers one off.

`instance_id` is `region/i-...` because EC2 ids are regional. Spot interruptions show up as
`StateReason.Code == "Server.SpotInstanceTermination"` and are reported as `preempted`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import Clock, SystemClock, iso
from argosy.core.config import Settings
from argosy.core.errors import (
    ArgosyError,
    CapacityError,
    NotFoundError,
    ProviderAuthError,
    ProviderError,
    QuotaError,
    RateLimitError,
)
from argosy.providers.base import MANAGED_LABEL, CheckResult, Instance, InstanceRequest, InstanceState, Plan
from argosy.providers.bootstrap import render_cloud_init
from argosy.providers.clients.http import RetryPolicy
from argosy.providers.common import (
    NAME_PREFIX,
    bootstrap_spec,
    canonical_gpu,
    check_control_plane,
    environ,
    import_sdk,
    key_fingerprint,
    managed_labels,
    node_name,
    require_kind,
)
from argosy.providers.sdk_errors import call_with_retry, transient

DEFAULT_REGIONS = ("us-east-1", "us-west-2")
DEFAULT_AMI = (
    "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
FAMILIES = ("g4dn.*", "g5.*", "g6.*", "p4d.*", "p5.*")
SECURITY_GROUP = "argosy-nodes"
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
_STATES: Mapping[str, InstanceState] = MappingProxyType(
    {
        "pending": "provisioning",
        "running": "running",
        "shutting-down": "terminated",
        "terminated": "terminated",
        "stopping": "terminated",  # shutdown behaviour is terminate: a stopping node is on its way out
        "stopped": "failed",
    }
)
_CAPACITY = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "SpotMaxPriceTooLow",
        "Unsupported",
    }
)
_QUOTA = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotInstanceLimitExceeded",
    }
)
_AUTH = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
    }
)
_THROTTLE = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"}
)
_NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
QUOTAS_URL = "https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas"


def translate(exc: Exception) -> ProviderError | None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

    if isinstance(exc, NoCredentialsError):
        return ProviderAuthError("aws: no credentials found", fix=_configure_fix(), provider="aws")
    if isinstance(exc, NoRegionError):
        return ProviderError("aws: no region", fix="export AWS_REGION=us-east-1", provider="aws")
    if isinstance(exc, EndpointConnectionError):
        return transient(
            ProviderError(
                f"aws: cannot reach {exc.kwargs.get('endpoint_url', 'the API')}",
                fix="check your network connection",
                provider="aws",
            )
        )
    if not isinstance(exc, ClientError):
        return None
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    msg = f"aws: {err.get('Message', code)} ({code})"
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _CAPACITY:
        return CapacityError(
            msg, fix="try another region, availability zone or instance type", provider="aws"
        )
    if code in _QUOTA:
        return QuotaError(msg, fix=f"request a quota increase: {QUOTAS_URL}", provider="aws")
    if code in _AUTH:
        return ProviderAuthError(
            msg,
            fix="check your AWS credentials (`aws sts get-caller-identity`) and IAM policy",
            provider="aws",
        )
    if code in _THROTTLE or status == 429:
        return RateLimitError(msg, fix="wait and retry", provider="aws")
    if code in _NOT_FOUND:
        return NotFoundError(msg, fix="run `argosy nodes list` to see what exists")
    if status >= 500 or code in ("InternalError", "ServiceUnavailable", "Unavailable"):
        return transient(
            ProviderError(msg, fix="retry later; see https://health.aws.amazon.com", provider="aws")
        )
    return ProviderError(msg, provider="aws")


ClientFactory = Callable[[str, str], Any]


class AwsProvider:
    name = "aws"

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        *,
        env: Mapping[str, str] | None = None,
        client_factory: ClientFactory | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._env = environ(env)
        regions = self._env.get("ARGOSY_AWS_REGIONS", "")
        self.regions = [r.strip() for r in regions.split(",") if r.strip()] or list(DEFAULT_REGIONS)
        self._factory = client_factory
        self._retry = retry
        self._clients: dict[tuple[str, str], Any] = {}

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            if self._factory is not None:
                self._clients[key] = self._factory(service, region)
            else:
                boto3 = import_sdk("boto3", "aws")
                from botocore.config import Config

                # botocore's own retries sleep in real time; Argosy retries on its injectable clock.
                cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, user_agent_extra="argosy")
                self._clients[key] = boto3.session.Session().client(service, region_name=region, config=cfg)
        return self._clients[key]

    def _call(self, fn: Callable[[], Any], idempotent: bool = True) -> Any:
        return call_with_retry(
            fn, clock=self.clock, translate=translate, idempotent=idempotent, retry=self._retry
        )

    # -- Preflight -----------------------------------------------------------------------------
    # -- SpotNotice (runs on the node itself) -------------------------------------------------------
    def spot_notice(self) -> str | None:
        from argosy.providers.preemption import AWS_IMDS, METADATA_URL_ENV, aws_spot_notice

        return aws_spot_notice(self._env.get(METADATA_URL_ENV) or AWS_IMDS)

    def preflight(self) -> list[CheckResult]:
        try:
            import boto3  # noqa: F401
        except ImportError:
            return [CheckResult("aws sdk", False, "boto3 is not installed", fix="pip install 'argosy[aws]'")]
        region = self.regions[0]
        try:
            ident = self._call(lambda: self._client("sts", region).get_caller_identity())
        except ProviderError as exc:
            return [
                CheckResult(
                    "aws credentials",
                    False,
                    exc.message,
                    fix=exc.fix or "aws configure (or export AWS_PROFILE=...)",
                )
            ]
        checks = [
            CheckResult("aws credentials", True, f"account {ident['Account']}"),
            check_control_plane(self.settings),
        ]
        # G and VT on-demand vCPU quota: 0 on new accounts, the most common first-launch failure.
        try:
            q = self._call(
                lambda: self._client("service-quotas", region).get_service_quota(
                    ServiceCode="ec2", QuotaCode="L-DB2E81BA"
                )
            )
            value = float(q["Quota"]["Value"])
            checks.append(
                CheckResult(
                    "aws gpu quota",
                    value > 0,
                    f"{region}: {value:.0f} vCPUs for G/VT on-demand instances",
                    fix=None
                    if value > 0
                    else f"request 'Running On-Demand G and VT instances': {QUOTAS_URL}",
                )
            )
        except ProviderError as exc:
            checks.append(
                CheckResult("aws gpu quota", True, f"could not read quotas ({exc.message}); not blocking")
            )
        return checks

    # -- Offerings -----------------------------------------------------------------------------
    def offerings(self) -> list[Offering]:
        fetched = iso(self.clock.now())
        out: list[Offering] = []
        for region in self.regions:
            types = self._instance_types(region)
            if not types:
                continue
            on_demand = self._on_demand_prices(region)
            spot = self._spot_prices(region, sorted(types))
            for name, t in sorted(types.items()):
                gpu = t["GpuInfo"]["Gpus"][0]
                common: dict[str, Any] = {
                    "provider": self.name,
                    "region": region,
                    "instance_type": name,
                    "gpu": canonical_gpu(
                        gpu["Name"], gpu.get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024 or None
                    ),
                    "gpu_count": int(gpu["Count"]),
                    "vcpus": t["VCpuInfo"]["DefaultVCpus"],
                    "ram_gb": round(t["MemoryInfo"]["SizeInMiB"] / 1024, 1),
                    "per_second_billing": True,
                    "fetched_at": fetched,
                }
                out.append(
                    Offering(
                        kind="vm",
                        price_per_hour=on_demand.get(name),
                        source="aws pricing get_products",
                        **common,
                    )
                )
                if name in spot and "spot" in t.get("SupportedUsageClasses", ["spot"]):
                    price, az = spot[name]
                    out.append(
                        Offering(
                            kind="spot",
                            price_per_hour=price,
                            source="ec2 describe_spot_price_history",
                            extra={"availability_zone": az},
                            **common,
                        )
                    )
        return out

    def _instance_types(self, region: str) -> dict[str, dict[str, Any]]:
        def fetch() -> dict[str, dict[str, Any]]:
            pages = (
                self._client("ec2", region)
                .get_paginator("describe_instance_types")
                .paginate(Filters=[{"Name": "instance-type", "Values": list(FAMILIES)}])
            )
            return {t["InstanceType"]: t for page in pages for t in page["InstanceTypes"] if t.get("GpuInfo")}

        return self._call(fetch)

    def _spot_prices(self, region: str, types: list[str]) -> dict[str, tuple[float, str]]:
        """The cheapest current spot price per type in the region, and its availability zone."""

        def fetch() -> dict[str, tuple[float, str]]:
            best: dict[str, tuple[float, str]] = {}
            pages = (
                self._client("ec2", region)
                .get_paginator("describe_spot_price_history")
                .paginate(InstanceTypes=types, ProductDescriptions=["Linux/UNIX"], StartTime=self.clock.now())
            )
            for page in pages:
                for p in page["SpotPriceHistory"]:
                    price = float(p["SpotPrice"])
                    if p["InstanceType"] not in best or price < best[p["InstanceType"]][0]:
                        best[p["InstanceType"]] = (price, p["AvailabilityZone"])
            return best

        return self._call(fetch)

    def _on_demand_prices(self, region: str) -> dict[str, float]:
        """Linux on-demand USD/hour per instance type from the Price List API (served from us-east-1)."""

        def fetch() -> dict[str, float]:
            filters = [
                {"Type": "TERM_MATCH", "Field": f, "Value": v}
                for f, v in (
                    ("regionCode", region),
                    ("operatingSystem", "Linux"),
                    ("tenancy", "Shared"),
                    ("preInstalledSw", "NA"),
                    ("capacitystatus", "Used"),
                    ("instanceFamily", "GPU instance"),
                )
            ]
            pages = (
                self._client("pricing", "us-east-1")
                .get_paginator("get_products")
                .paginate(ServiceCode="AmazonEC2", Filters=filters)
            )
            prices: dict[str, float] = {}
            for page in pages:
                for raw in page["PriceList"]:
                    item = json.loads(raw)
                    itype = item["product"]["attributes"].get("instanceType", "")
                    for term in item.get("terms", {}).get("OnDemand", {}).values():
                        for dim in term["priceDimensions"].values():
                            usd = float(dim["pricePerUnit"].get("USD", 0) or 0)
                            if usd > 0:
                                prices[itype] = usd
            return prices

        try:
            return self._call(fetch)
        except (ProviderAuthError, QuotaError):
            raise
        except ProviderError:
            return {}  # prices unknown (None), never guessed: spot prices and specs are still live

    # -- Instances -----------------------------------------------------------------------------
    def plan(self, request: InstanceRequest) -> Plan:
        off = request.offering
        require_kind(self.name, off.kind, ["vm", "spot"])
        cloud_init = render_cloud_init(bootstrap_spec(request, self._env, self.settings))
        tags = [{"Key": k, "Value": v} for k, v in sorted(managed_labels(request).items())]
        tags.append({"Key": "Name", "Value": node_name(request.name)})
        run: dict[str, Any] = {
            "ImageId": self._env.get("ARGOSY_AWS_AMI") or DEFAULT_AMI,
            "InstanceType": off.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": cloud_init,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/sda1",
                    "Ebs": {"VolumeSize": request.disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True},
                }
            ],
            "MetadataOptions": {"HttpTokens": "required"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if request.ssh_public_key:
            run["KeyName"] = f"{NAME_PREFIX}{key_fingerprint(request.ssh_public_key)}"
        if off.kind == "spot":
            run["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return Plan(
            provider=self.name,
            action="provision",
            offering=off,
            payload={
                "region": off.region,
                "run_instances": run,
                "security_group": {
                    "GroupName": SECURITY_GROUP,
                    "ingress": "tcp/22 from 0.0.0.0/0",
                    "note": "created in the default VPC if missing; its id is added at provision",
                },
            },
            artifacts={
                "cloud-init": cloud_init,
                **({"ssh_public_key": request.ssh_public_key} if request.ssh_public_key else {}),
            },
            estimated_cost_per_hour=off.price_per_hour,
            notes=["Spot instances are terminated on interruption; Argosy reports them as 'preempted'."]
            if off.kind == "spot"
            else [],
        )

    def _ensure_security_group(self, region: str) -> str:
        ec2 = self._client("ec2", region)
        found = self._call(
            lambda: ec2.describe_security_groups(
                Filters=[
                    {"Name": "group-name", "Values": [SECURITY_GROUP]},
                    {"Name": f"tag:{MANAGED_LABEL}", "Values": ["true"]},
                ]
            )
        )["SecurityGroups"]
        if found:
            return found[0]["GroupId"]
        created = self._call(
            lambda: ec2.create_security_group(
                GroupName=SECURITY_GROUP,
                Description="Argosy nodes: SSH in; the agent dials out to the server",
                TagSpecifications=[
                    {"ResourceType": "security-group", "Tags": [{"Key": MANAGED_LABEL, "Value": "true"}]}
                ],
            ),
            idempotent=False,
        )
        group_id = created["GroupId"]
        self._call(
            lambda: ec2.authorize_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 22,
                        "ToPort": 22,
                        "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh"}],
                    }
                ],
            ),
            idempotent=False,
        )
        return group_id

    def _ensure_key_pair(self, region: str, name: str, public_key: str) -> None:
        ec2 = self._client("ec2", region)
        pairs = self._call(lambda: ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}]))
        if pairs["KeyPairs"]:
            return
        self._call(
            lambda: ec2.import_key_pair(
                KeyName=name,
                PublicKeyMaterial=public_key.encode(),
                TagSpecifications=[
                    {"ResourceType": "key-pair", "Tags": [{"Key": MANAGED_LABEL, "Value": "true"}]}
                ],
            ),
            idempotent=False,
        )

    def provision(self, plan: Plan) -> Instance:
        region = plan.payload["region"]
        run = dict(plan.payload["run_instances"])
        if "KeyName" in run:
            self._ensure_key_pair(region, run["KeyName"], plan.artifacts["ssh_public_key"])
        run["SecurityGroupIds"] = [self._ensure_security_group(region)]
        out = self._call(lambda: self._client("ec2", region).run_instances(**run), idempotent=False)
        inst = out["Instances"][0]
        return _to_instance(inst, region, price=plan.estimated_cost_per_hour)

    def _split(self, instance_id: str) -> tuple[str, str]:
        region, _, iid = instance_id.partition("/")
        if not iid.startswith("i-"):
            raise ArgosyError(
                f"aws instance id '{instance_id}' is not region/i-...",
                fix="use the id `argosy nodes list` shows",
            )
        return region, iid

    def status(self, instance_id: str) -> Instance:
        region, iid = self._split(instance_id)
        try:
            out = self._call(lambda: self._client("ec2", region).describe_instances(InstanceIds=[iid]))
        except NotFoundError:
            return Instance(
                self.name, instance_id, "", "terminated", region=region, reason="no longer exists at aws"
            )
        found = [i for r in out["Reservations"] for i in r["Instances"]]
        if not found:
            return Instance(
                self.name, instance_id, "", "terminated", region=region, reason="no longer exists at aws"
            )
        return _to_instance(found[0], region)

    def list(self) -> list[Instance]:
        out: list[Instance] = []
        for region in self.regions:

            def fetch(region: str = region) -> list[dict[str, Any]]:
                pages = (
                    self._client("ec2", region)
                    .get_paginator("describe_instances")
                    .paginate(
                        Filters=[
                            {"Name": f"tag:{MANAGED_LABEL}", "Values": ["true"]},
                            {"Name": "instance-state-name", "Values": LIVE_STATES},
                        ]
                    )
                )
                return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

            for inst in self._call(fetch):
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                if tags.get(MANAGED_LABEL) == "true":  # checked again: cleanup must never touch others
                    out.append(_to_instance(inst, region))
        return out

    def terminate(self, instance_id: str) -> None:
        region, iid = self._split(instance_id)
        try:
            self._call(lambda: self._client("ec2", region).terminate_instances(InstanceIds=[iid]))
        except NotFoundError:
            return  # already gone: terminate is idempotent


def _to_instance(inst: dict[str, Any], region: str, price: float | None = None) -> Instance:
    state_name = inst.get("State", {}).get("Name", "")
    reason_code = inst.get("StateReason", {}).get("Code", "")
    state: InstanceState = _STATES.get(state_name, "unknown")
    reason = ""
    if reason_code == "Server.SpotInstanceTermination" or (
        inst.get("InstanceLifecycle") == "spot" and reason_code.startswith("Server.Spot")
    ):
        state, reason = "preempted", f"aws interrupted the spot instance ({reason_code})"
    elif reason_code and state_name not in ("running", "pending"):
        reason = f"aws: {inst['StateReason'].get('Message', reason_code)}"
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    return Instance(
        provider="aws",
        instance_id=f"{region}/{inst['InstanceId']}",
        name=tags.get("Name", ""),
        state=state,
        region=region,
        address=inst.get("PublicIpAddress"),
        labels={k: v for k, v in tags.items() if k != "Name"} if tags.get(MANAGED_LABEL) == "true" else {},
        price_per_hour=price,
        reason=reason,
    )


def _configure_fix() -> str:
    # `aws configure` needs the AWS CLI; say how to get it when it is missing.
    configure = "aws configure (or export AWS_PROFILE=<profile>)"
    if shutil.which("aws"):
        return configure
    return f"install the AWS CLI (https://aws.amazon.com/cli/), then {configure}"
