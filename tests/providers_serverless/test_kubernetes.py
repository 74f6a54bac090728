"""Kubernetes provider against a loopback fake API server that checks every request it gets."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest
import yaml

pytest.importorskip("kubernetes")

from kubernetes import client  # noqa: E402

from argosy.core.errors import ArgosyError, ConfigError, NotFoundError, ProviderAuthError  # noqa: E402
from argosy.providers.base import MANAGED_LABEL, EndpointRequest, Endpoints, Preflight  # noqa: E402
from argosy.providers.kubernetes import (  # noqa: E402
    JobRequest,
    KubernetesProvider,
    SandboxRequest,
)

from .fakeapi import Req  # noqa: E402

KINDS = {  # plural -> (group path prefix, kind)
    "secrets": ("/api/v1", "Secret"),
    "services": ("/api/v1", "Service"),
    "pods": ("/api/v1", "Pod"),
    "deployments": ("/apis/apps/v1", "Deployment"),
    "jobs": ("/apis/batch/v1", "Job"),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "NetworkPolicy"),
}


class FakeKube:
    """A tiny API server: namespaced CRUD + label-selector lists, with shape checks per kind."""

    def __init__(self, token: str = "kube-token") -> None:
        self.token = token
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.namespaces = {"argosy", "default"}
        self.rv = itertools.count(1)
        self.nodes: list[dict[str, Any]] = []

    def check(self, plural: str, obj: dict[str, Any]) -> None:
        prefix, kind = KINDS[plural]
        assert obj["kind"] == kind and obj["apiVersion"] == prefix.removeprefix("/api/").removeprefix(
            "/apis/"
        )
        labels = obj["metadata"]["labels"]
        assert labels.get(MANAGED_LABEL) == "true", f"{kind} without the managed label"
        if kind == "Deployment":
            sel = obj["spec"]["selector"]["matchLabels"]
            tpl = obj["spec"]["template"]["metadata"]["labels"]
            assert all(tpl.get(k) == v for k, v in sel.items()), "selector does not match the pod template"
            c = obj["spec"]["template"]["spec"]["containers"][0]
            assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
            assert c["startupProbe"]["httpGet"]["path"] == "/health"
        if kind == "Secret":
            assert "<secret:" not in str(obj), "a placeholder reached the cluster"
            assert obj.get("stringData") or obj.get("data")
        if kind == "Pod":
            spec = obj["spec"]
            assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
            assert spec["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]

    def __call__(self, req: Req) -> tuple[int, Any]:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"kind": "Status", "status": "Failure", "message": "Unauthorized", "code": 401}
        p = req.path
        if p == "/api/v1/nodes":
            return 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": self.nodes}
        if p.startswith("/api/v1/namespaces/") and p.count("/") == 4:
            ns = p.rsplit("/", 1)[1]
            if ns not in self.namespaces:
                return 404, {"kind": "Status", "message": f'namespaces "{ns}" not found', "code": 404}
            return 200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns}}
        for plural, (prefix, kind) in KINDS.items():
            base = f"{prefix}/namespaces/"
            if not p.startswith(base):
                continue
            rest = p[len(base) :].split("/")
            if len(rest) < 2 or rest[1] != plural:
                continue
            ns, name = rest[0], (rest[2] if len(rest) > 2 else None)
            if ns not in self.namespaces:
                return 404, {"kind": "Status", "message": f'namespaces "{ns}" not found', "code": 404}
            if req.method == "POST" and name is None:
                obj = req.body
                self.check(plural, obj)
                key = (plural, ns, obj["metadata"]["name"])
                if key in self.objects:
                    return 409, {
                        "kind": "Status",
                        "message": f'{plural} "{key[2]}" already exists',
                        "code": 409,
                    }
                obj = {
                    **obj,
                    "metadata": {**obj["metadata"], "namespace": ns, "resourceVersion": str(next(self.rv))},
                }
                if kind == "Secret":
                    enc = {k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()}
                    obj["data"] = enc
                obj.setdefault("status", {})
                self.objects[key] = obj
                return 201, obj
            if req.method == "GET" and name is None:
                sel = dict(kv.split("=", 1) for kv in req.query.get("labelSelector", "").split(",") if kv)
                items = [
                    o
                    for (pl, n, _), o in self.objects.items()
                    if pl == plural
                    and n == ns
                    and all(o["metadata"]["labels"].get(k) == v for k, v in sel.items())
                ]
                return 200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {}, "items": items}
            key = (plural, ns, name)
            if key not in self.objects:
                return 404, {"kind": "Status", "message": f'{plural} "{name}" not found', "code": 404}
            if req.method == "GET":
                return 200, self.objects[key]
            if req.method == "PATCH" and len(rest) == 4 and rest[3] == "scale":
                assert req.headers.get("content-type", "").startswith("application/"), (
                    "patch needs a patch type"
                )
                self.objects[key]["spec"]["replicas"] = req.body["spec"]["replicas"]
                return 200, {
                    "kind": "Scale",
                    "apiVersion": "autoscaling/v1",
                    "spec": req.body["spec"],
                    "metadata": {"name": name},
                }
            if req.method == "DELETE":
                assert req.query.get("propagationPolicy") == "Foreground", (
                    "deletes must cascade in the foreground"
                )
                self.objects.pop(key)
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        raise AssertionError(f"unexpected call {req.method} {p}")


@pytest.fixture
def kube(fake_api, settings, clock):
    fake = FakeKube()
    server = fake_api(fake)
    cfg = client.Configuration(host=server.url)
    # As kubeconfig loading does: the whole header value, prefix included (works across client versions).
    cfg.api_key = {"authorization": "Bearer kube-token"}
    p = KubernetesProvider(settings, clock, env={}, api_client=client.ApiClient(cfg))
    return p, fake, server


def req(**extra: Any) -> EndpointRequest:
    return EndpointRequest("chat", "Qwen/Qwen2.5-7B-Instruct", min_workers=2, extra={"gpu": "L4", **extra})


def test_plan_renders_manifests(kube):
    p, _, _ = kube
    assert isinstance(p, Endpoints) and isinstance(p, Preflight)
    plan = p.plan_endpoint(req(price_per_hour=0.8))
    docs = list(yaml.safe_load_all(plan.artifacts["manifests.yaml"]))
    assert [d["kind"] for d in docs] == ["Secret", "Deployment", "Service"]
    dep = docs[1]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert dep["spec"]["replicas"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["command"] == ["vllm", "serve"] and c["args"][:3] == [
        "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name",
        "chat",
    ]
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    assert all(d["metadata"]["labels"][MANAGED_LABEL] == "true" for d in docs)
    assert docs[0]["stringData"]["api-key"] == "<secret:API_KEY>"
    assert plan.estimated_cost_per_hour == pytest.approx(1.6)
    assert any("router auth: Authorization: Bearer" in n for n in plan.notes)


def test_endpoint_lifecycle_and_cleanup(kube):
    p, fake, server = kube
    fake.objects[("deployments", "argosy", "someone-else")] = {
        "kind": "Deployment",
        "metadata": {"name": "someone-else", "labels": {"app": "x"}},
    }
    ep = p.deploy(p.plan_endpoint(req()))
    assert ep.endpoint_id == "argosy/argosy-chat" and ep.state == "deploying"
    assert ep.url == "http://argosy-chat.argosy.svc.cluster.local:8000/v1"
    token = ep.auth_header["Authorization"].removeprefix("Bearer ")
    assert len(token) > 30 and token not in repr(ep)
    st = p.endpoint_status(ep.endpoint_id)
    assert st.state == "deploying" and st.auth_header == ep.auth_header  # token read back from the Secret
    fake.objects[("deployments", "argosy", "argosy-chat")]["status"] = {"readyReplicas": 2}
    assert p.endpoint_status(ep.endpoint_id).state == "ready"
    p.destroy(ep.endpoint_id)
    assert list(fake.objects) == [("deployments", "argosy", "someone-else")]  # only ours went
    with pytest.raises(NotFoundError):
        p.endpoint_status(ep.endpoint_id)
    assert server.errors == []


def test_conflict_rolls_back_partial_deploy(kube):
    p, fake, _ = kube
    fake.objects[("services", "argosy", "argosy-chat")] = {
        "kind": "Service",
        "metadata": {"name": "argosy-chat", "labels": {"app": "other"}},
    }
    with pytest.raises(ArgosyError, match="already exists") as info:
        p.deploy(p.plan_endpoint(req()))
    assert "fix:" in str(info.value)
    # The secret and deployment we made were removed; the foreign service was not touched.
    assert list(fake.objects) == [("services", "argosy", "argosy-chat")]


def test_training_job_lifecycle(kube):
    p, fake, server = kube
    plan = p.plan_job(
        JobRequest("ft-1", "ghcr.io/x/train:1", ["python", "-m", "train"], gpu="A100-80GB", gpu_count=2)
    )
    job = plan.payload["job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 86400
    jid = p.submit_job(plan)
    fake.objects[("jobs", "argosy", "argosy-ft-1")]["status"] = {"active": 1}
    assert p.job_status(jid) == "running"
    fake.objects[("jobs", "argosy", "argosy-ft-1")]["status"] = {
        "conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}
        ]
    }
    assert p.job_status(jid).startswith("failed: DeadlineExceeded")
    p.delete_job(jid)
    assert fake.objects == {} and server.errors == []


def test_sandbox_pod_with_runtime_class_and_no_network(kube):
    p, fake, server = kube
    plan = p.plan_sandbox(
        SandboxRequest("run-7", "python:3.12-slim", ["python", "-c", "print(1)"], runtime_class="gvisor")
    )
    pod = plan.payload["pod"]
    assert pod["spec"]["runtimeClassName"] == "gvisor" and pod["spec"]["activeDeadlineSeconds"] == 60
    assert plan.payload["network_policy"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    sid = p.run_sandbox(plan)
    assert server.calls()[:2] == [
        "POST /apis/networking.k8s.io/v1/namespaces/argosy/networkpolicies",
        "POST /api/v1/namespaces/argosy/pods",
    ]
    fake.objects[("pods", "argosy", "argosy-run-7")]["status"] = {"phase": "Succeeded"}
    assert p.sandbox_status(sid) == "succeeded"
    p.delete_sandbox(sid)
    assert fake.objects == {} and server.errors == []
    unconfined = p.plan_sandbox(SandboxRequest("r", "img", ["true"], network=True))
    assert "network_policy" not in unconfined.payload and "no RuntimeClass" in unconfined.notes[0]


def test_offerings_are_live_gpu_nodes_with_unknown_price(kube):
    p, fake, _ = kube
    fake.nodes = [
        {
            "metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
            "status": {"allocatable": {"nvidia.com/gpu": "4"}},
        },
        {"metadata": {"name": "cpu-1", "labels": {}}, "status": {"allocatable": {"cpu": "8"}}},
    ]
    offs = p.offerings()
    assert [(o.instance_type, o.gpu, o.gpu_count, o.price_per_hour) for o in offs] == [
        ("gpu-1", "L4", 4, None),
        ("cpu-1", None, 0, None),
    ]


def test_errors_for_people(kube, fake_api, settings, clock):
    p, fake, _ = kube
    fake.namespaces.discard("argosy")
    checks = p.preflight()
    assert not checks[-1].ok and "kubectl create namespace argosy" in (checks[-1].fix or "")
    server = fake_api(FakeKube(token="other"))
    cfg = client.Configuration(host=server.url)
    cfg.api_key = {"authorization": "Bearer wrong"}
    bad = KubernetesProvider(settings, clock, env={}, api_client=client.ApiClient(cfg))
    with pytest.raises(ProviderAuthError):
        bad.endpoint_status("argosy/argosy-chat")
    with pytest.raises(ConfigError, match="NAMESPACE/NAME"):
        p.destroy("no-slash")
    with pytest.raises(ConfigError, match="node_selector"):
        p.plan_endpoint(req(gpu="MI300X"))


def test_preflight_without_cluster_config_says_what_to_set(settings, clock, tmp_path):
    p = KubernetesProvider(settings, clock, env={"KUBECONFIG": str(tmp_path / "missing")})
    bad = [c for c in p.preflight() if not c.ok]
    assert bad and "export KUBECONFIG=" in (bad[0].fix or "")


def test_scale_and_weights_pvc_and_hf_token(kube, settings, clock):
    p, fake, server = kube
    plan = p.plan_endpoint(req(weights_pvc="hf-weights", hf_token_env="MY_HF"))
    vols = {v["name"]: v for v in plan.payload["deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["hf-cache"] == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-weights"}}
    assert plan.payload["secret"]["stringData"]["hf-token"] == "<secret:HF_TOKEN>"
    with pytest.raises(ConfigError, match="HF_TOKEN"):
        p.deploy(plan)  # the env var named by hf_token_env is not set: nothing half-made is left
    assert fake.objects == {}
    p2 = KubernetesProvider(settings, clock, env={"MY_HF": "hf_abc"}, api_client=p._api_client)
    ep = p2.deploy(p2.plan_endpoint(req(hf_token_env="MY_HF")))
    secret = fake.objects[("secrets", "argosy", "argosy-chat")]
    assert base64.b64decode(secret["data"]["hf-token"]).decode() == "hf_abc"
    p2.scale_endpoint(ep.endpoint_id, 0)
    assert fake.objects[("deployments", "argosy", "argosy-chat")]["spec"]["replicas"] == 0
    assert server.errors == []
