"""AWS through real boto3 clients with botocore's Stubber, which validates every call against the service model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .vmhelpers import TOKEN, make_request

pytest.importorskip("boto3")

import boto3  # noqa: E402
from botocore.stub import ANY, Stubber  # noqa: E402

from argosy.catalog.types import Offering  # noqa: E402
from argosy.core.errors import CapacityError, ProviderAuthError, QuotaError  # noqa: E402
from argosy.providers.aws import AwsProvider  # noqa: E402
from argosy.providers.base import MANAGED_LABEL  # noqa: E402

REGION = "us-east-1"


class Stubs:
    """One stubbed client per (service, region), made on first use, checked at the end."""

    def __init__(self) -> None:
        self.session = boto3.session.Session(
            aws_access_key_id="AKIATESTTESTTESTTEST", aws_secret_access_key="test-secret", region_name=REGION
        )
        self.clients: dict[tuple[str, str], tuple[object, Stubber]] = {}

    def stub(self, service: str, region: str = REGION) -> Stubber:
        if (service, region) not in self.clients:
            client = self.session.client(service, region_name=region)
            stubber = Stubber(client)
            stubber.activate()
            self.clients[(service, region)] = (client, stubber)
        return self.clients[(service, region)][1]

    def factory(self, service: str, region: str) -> object:
        self.stub(service, region)
        return self.clients[(service, region)][0]

    def verify(self) -> None:
        for _, stubber in self.clients.values():
            stubber.assert_no_pending_responses()


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    s = Stubs()
    yield s
    s.verify()


def _provider(stubs: Stubs, settings, clock) -> AwsProvider:
    return AwsProvider(settings, clock, env={"ARGOSY_AWS_REGIONS": REGION}, client_factory=stubs.factory)


def _offering(kind: str = "spot") -> Offering:
    return Offering("aws", REGION, "g5.xlarge", "A10G", 1, kind, 0.45)


def _ec2_instance(state: str, reason: str | None = None, lifecycle: str = "spot") -> dict:
    inst = {
        "InstanceId": "i-0abc123",
        "InstanceType": "g5.xlarge",
        "State": {"Name": state, "Code": 16},
        "PublicIpAddress": "54.1.2.3",
        "InstanceLifecycle": lifecycle,
        "Tags": [{"Key": MANAGED_LABEL, "Value": "true"}, {"Key": "Name", "Value": "argosy-llama-1"}],
    }
    if reason:
        inst["StateReason"] = {"Code": reason, "Message": f"{reason}: Spot instance termination"}
    return inst


def test_offerings(stubs, settings, clock):
    ec2 = stubs.stub("ec2")
    ec2.add_response(
        "describe_instance_types",
        {
            "InstanceTypes": [
                {
                    "InstanceType": "g5.xlarge",
                    "VCpuInfo": {"DefaultVCpus": 4},
                    "MemoryInfo": {"SizeInMiB": 16384},
                    "SupportedUsageClasses": ["on-demand", "spot"],
                    "GpuInfo": {
                        "Gpus": [
                            {
                                "Name": "A10G",
                                "Manufacturer": "NVIDIA",
                                "Count": 1,
                                "MemoryInfo": {"SizeInMiB": 24576},
                            }
                        ]
                    },
                }
            ]
        },
        {"Filters": [{"Name": "instance-type", "Values": ["g4dn.*", "g5.*", "g6.*", "p4d.*", "p5.*"]}]},
    )
    product = {
        "product": {"attributes": {"instanceType": "g5.xlarge"}},
        "terms": {
            "OnDemand": {
                "X": {"priceDimensions": {"Y": {"unit": "Hrs", "pricePerUnit": {"USD": "1.0060000000"}}}}
            }
        },
    }
    stubs.stub("pricing").add_response(
        "get_products",
        {"PriceList": [json.dumps(product)], "FormatVersion": "aws_v1"},
        {"ServiceCode": "AmazonEC2", "Filters": ANY},
    )
    ec2.add_response(
        "describe_spot_price_history",
        {
            "SpotPriceHistory": [
                {
                    "InstanceType": "g5.xlarge",
                    "SpotPrice": "0.4512",
                    "AvailabilityZone": "us-east-1b",
                    "ProductDescription": "Linux/UNIX",
                },
                {
                    "InstanceType": "g5.xlarge",
                    "SpotPrice": "0.3900",
                    "AvailabilityZone": "us-east-1d",
                    "ProductDescription": "Linux/UNIX",
                },
            ]
        },
        {"InstanceTypes": ["g5.xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": ANY},
    )
    offs = _provider(stubs, settings, clock).offerings()
    assert [(o.kind, o.gpu, o.price_per_hour, o.extra.get("availability_zone")) for o in offs] == [
        ("vm", "A10G", 1.006, None),
        ("spot", "A10G", 0.39, "us-east-1d"),
    ]


def test_lifecycle_spot_interrupted(stubs, settings, clock):
    stubs.stub("sts").add_response(
        "get_caller_identity", {"UserId": "AIDA", "Account": "123456789012", "Arn": "arn:aws:iam::1:user/a"}
    )
    stubs.stub("service-quotas").add_response(
        "get_service_quota",
        {"Quota": {"QuotaCode": "L-DB2E81BA", "Value": 64.0}},
        {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"},
    )
    p = _provider(stubs, settings, clock)
    assert all(c.ok for c in p.preflight())

    plan = p.plan(make_request(_offering("spot")))
    run = plan.payload["run_instances"]
    assert run["InstanceMarketOptions"]["MarketType"] == "spot"
    assert run["UserData"] == plan.artifacts["cloud-init"] and TOKEN in run["UserData"]
    assert {"Key": MANAGED_LABEL, "Value": "true"} in run["TagSpecifications"][0]["Tags"]

    ec2 = stubs.stub("ec2")
    ec2.add_response(
        "describe_key_pairs",
        {"KeyPairs": []},
        {"Filters": [{"Name": "key-name", "Values": [run["KeyName"]]}]},
    )
    ec2.add_response(
        "import_key_pair",
        {"KeyName": run["KeyName"], "KeyFingerprint": "ab"},
        {"KeyName": run["KeyName"], "PublicKeyMaterial": ANY, "TagSpecifications": ANY},
    )
    ec2.add_response("describe_security_groups", {"SecurityGroups": []}, {"Filters": ANY})
    ec2.add_response(
        "create_security_group",
        {"GroupId": "sg-0123"},
        {"GroupName": "argosy-nodes", "Description": ANY, "TagSpecifications": ANY},
    )
    ec2.add_response(
        "authorize_security_group_ingress", {"Return": True}, {"GroupId": "sg-0123", "IpPermissions": ANY}
    )
    ec2.add_response(
        "run_instances",
        {"Instances": [_ec2_instance("pending")], "ReservationId": "r-1"},
        {**run, "SecurityGroupIds": ["sg-0123"]},
    )  # exactly the planned payload
    ec2.add_response(
        "describe_instances",
        {"Reservations": [{"Instances": [_ec2_instance("running")]}]},
        {"InstanceIds": ["i-0abc123"]},
    )
    ec2.add_response(
        "describe_instances",
        {"Reservations": [{"Instances": [_ec2_instance("terminated", "Server.SpotInstanceTermination")]}]},
        {"InstanceIds": ["i-0abc123"]},
    )
    ec2.add_client_error(
        "terminate_instances",
        "InvalidInstanceID.NotFound",
        "The instance ID does not exist",
        400,
        expected_params={"InstanceIds": ["i-0abc123"]},
    )
    ec2.add_response(
        "describe_instances",
        {"Reservations": []},
        {
            "Filters": [
                {"Name": f"tag:{MANAGED_LABEL}", "Values": ["true"]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped", "shutting-down"],
                },
            ]
        },
    )

    inst = p.provision(plan)
    assert (inst.instance_id, inst.state) == ("us-east-1/i-0abc123", "provisioning")
    running = p.status(inst.instance_id)
    assert running.state == "running" and running.address == "54.1.2.3"
    pre = p.status(inst.instance_id)
    assert pre.state == "preempted" and "Server.SpotInstanceTermination" in pre.reason
    p.terminate(inst.instance_id)  # already gone: no error
    assert p.list() == []


@pytest.mark.parametrize(
    ("code", "status", "err"),
    [
        ("InsufficientInstanceCapacity", 500, CapacityError),
        ("VcpuLimitExceeded", 400, QuotaError),
        ("UnauthorizedOperation", 403, ProviderAuthError),
    ],
)
def test_run_instances_errors_typed(stubs, settings, clock, code, status, err):
    p = _provider(stubs, settings, clock)
    plan = p.plan(make_request(_offering("vm")))
    ec2 = stubs.stub("ec2")
    ec2.add_response("describe_key_pairs", {"KeyPairs": [{"KeyName": "k"}]}, {"Filters": ANY})
    ec2.add_response("describe_security_groups", {"SecurityGroups": [{"GroupId": "sg-9"}]}, {"Filters": ANY})
    ec2.add_client_error(
        "run_instances", code, "We currently do not have sufficient g5.xlarge capacity", status
    )
    with pytest.raises(err) as info:
        p.provision(plan)
    assert info.value.provider == "aws"


def test_throttling_backs_off_on_the_clock(stubs, settings, clock):
    ec2 = stubs.stub("ec2")
    ec2.add_client_error("describe_instances", "RequestLimitExceeded", "Request limit exceeded.", 503)
    ec2.add_response("describe_instances", {"Reservations": [{"Instances": [_ec2_instance("running")]}]})
    start = clock.now()
    assert _provider(stubs, settings, clock).status("us-east-1/i-0abc123").state == "running"
    assert clock.now() > start


def test_on_demand_plan_has_no_market_options(settings, clock):
    plan = AwsProvider(settings, clock, env={}).plan(make_request(_offering("vm")))
    run = plan.payload["run_instances"]
    assert "InstanceMarketOptions" not in run and run["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert run["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/")
