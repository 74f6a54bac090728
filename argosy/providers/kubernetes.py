"""Kubernetes: vLLM replicas as a Deployment + Service, training runs as Jobs, sandboxes as Pods.

For users who already run a cluster. Everything goes through the official `kubernetes` client
(`pip install 'argosy[kubernetes]'`), imported lazily. Plans render the exact manifests (printable
with `--dry-run`); apply creates them; destroy deletes everything carrying the endpoint's label.

- Endpoint: a Secret (the vLLM API key the router sends as a bearer token), a Deployment (GPU
  requests/limits, node selector from the GPU's feature-discovery label, GPU toleration, probes on
  vLLM's unauthenticated `/health`), and a Service. `endpoint_id` is `namespace/name`.
- Training job: a batch/v1 Job with GPU limits, a deadline and no retries past `backoff_limit`.
- Sandbox: a Pod with a RuntimeClass (gVisor `gvisor`/`runsc`, Kata `kata`) when configured, no service
  account token, a non-root read-only container with every capability dropped, an active deadline,
  and a deny-all NetworkPolicy when the run has no network.

Every object carries `argosy-managed=true` plus an `argosy-endpoint`/`argosy-job`/`argosy-sandbox`
label, and destroy lists by those labels, so it never touches anything Argosy did not create.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import Clock, iso
from argosy.core.config import Settings
from argosy.core.errors import (
    ArgosyError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ProviderAuthError,
    ProviderError,
    QuotaError,
)
from argosy.providers.base import MANAGED_LABEL, CheckResult, EndpointRequest, Plan
from argosy.providers.common import environ, import_sdk
from argosy.providers.templates.serverless import (
    HEALTH_PATH,
    VLLM_IMAGE,
    VLLM_PORT,
    ColdStart,
    EndpointFacts,
    ServerlessEndpoint,
    bearer,
    check_extra,
    cold_start,
    fill_secrets,
    new_token,
    requested_gpu,
    resource_name,
    secret_ref,
    served_name,
)
from argosy.providers.templates.serverless import labels as managed_labels

PROVIDER = "kubernetes"
DEFAULT_NAMESPACE = "argosy"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
JOB_LABEL = "argosy-job"
SANDBOX_LABEL = "argosy-sandbox"
ENDPOINT_LABEL = "argosy-endpoint"
# NVIDIA GPU feature discovery's `nvidia.com/gpu.product` values for the catalog's GPU names.
GPU_PRODUCTS = {
    "T4": "Tesla-T4",
    "L4": "NVIDIA-L4",
    "A10G": "NVIDIA-A10G",
    "L40S": "NVIDIA-L40S",
    "A100-40GB": "NVIDIA-A100-SXM4-40GB",
    "A100-80GB": "NVIDIA-A100-SXM4-80GB",
    "H100-SXM": "NVIDIA-H100-80GB-HBM3",
    "H100-PCIe": "NVIDIA-H100-PCIe",
    "H200": "NVIDIA-H200",
}
PUBLISHED_COLD_START = ColdStart(
    None, "depends on your cluster: image pull, scheduling and weight download; measure with bench/"
)
OPTIONS = (
    "namespace",
    "node_selector",
    "service_type",
    "max_model_len",
    "image",
    "startup_budget_s",
    "price_per_hour",
    "cpu",
    "memory",
    "hf_token_env",
    "weights_pvc",
)
# Startup probe period; the failure threshold is sized so the budget covers download + load.
PROBE_PERIOD_S = 10


@dataclass
class JobRequest:
    """A training run: an image and command on `gpu_count` GPUs, finished within `deadline_s`."""

    name: str
    image: str
    command: Sequence[str]
    gpu: str | None = None
    gpu_count: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    cpu: str = "4"
    memory: str = "32Gi"
    backoff_limit: int = 0
    deadline_s: int = 24 * 3600
    namespace: str | None = None


@dataclass
class SandboxRequest:
    """Untrusted code in an isolated pod: a RuntimeClass when the cluster has one, no network by default."""

    name: str
    image: str
    command: Sequence[str]
    runtime_class: str | None = None  # e.g. "gvisor" (runsc) or "kata"
    cpu: str = "1"
    memory: str = "512Mi"
    timeout_s: int = 60
    network: bool = False
    namespace: str | None = None


def _gpu_count(resources: Mapping[str, Any]) -> int:
    return int((resources.get("limits") or {}).get(GPU_RESOURCE, 0) or 0)


# -- pure renderers --------------------------------------------------------------------------------


def render_endpoint(request: EndpointRequest, namespace: str) -> dict[str, Any]:
    """Secret + Deployment + Service for a vLLM endpoint; the Secret holds a placeholder, not the token."""
    check_extra(PROVIDER, request.extra, OPTIONS)
    name = resource_name(request.name)
    lbl = managed_labels(request.name)
    selector = {ENDPOINT_LABEL: lbl[ENDPOINT_LABEL]}
    gpu, count = requested_gpu(request, "")
    node_selector = dict(request.extra.get("node_selector") or {})
    if gpu and gpu in GPU_PRODUCTS and not node_selector:
        node_selector = {GPU_PRODUCT_LABEL: GPU_PRODUCTS[gpu]}
    if gpu and gpu not in GPU_PRODUCTS and not node_selector:
        raise ConfigError(
            f"{PROVIDER}: no known node label for GPU '{gpu}'",
            fix="pass extra={'node_selector': {'nvidia.com/gpu.product': '...'}} matching your nodes' labels",
        )
    count = count if gpu else max(1, count)
    env: list[dict[str, Any]] = [
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": name, "key": "api-key"}}},
    ]
    secret_data = {"api-key": secret_ref("API_KEY")}
    if request.extra.get("hf_token_env"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "hf-token"}}})
        secret_data["hf-token"] = secret_ref("HF_TOKEN")
    budget = int(request.extra.get("startup_budget_s", 1800))
    probe = {"httpGet": {"path": HEALTH_PATH, "port": "http"}}
    container = {
        "name": "vllm",
        "image": str(request.extra.get("image", VLLM_IMAGE)),
        "command": ["vllm", "serve"],
        "args": [
            *_vllm(request, count),
        ],
        "env": env,
        "ports": [{"name": "http", "containerPort": VLLM_PORT}],
        "resources": {
            "requests": {
                "cpu": str(request.extra.get("cpu", "4")),
                "memory": str(request.extra.get("memory", "32Gi")),
                GPU_RESOURCE: str(count),
            },
            "limits": {"memory": str(request.extra.get("memory", "32Gi")), GPU_RESOURCE: str(count)},
        },
        # vLLM downloads and loads weights before /health answers: the startup probe carries that
        # budget so the liveness probe never kills a replica that is still loading.
        "startupProbe": {
            **probe,
            "periodSeconds": PROBE_PERIOD_S,
            "failureThreshold": math.ceil(budget / PROBE_PERIOD_S),
        },
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "hf-cache", "mountPath": "/root/.cache/huggingface"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        # Tensor-parallel workers share memory through /dev/shm; the default 64 MiB is too small.
        "volumes": [
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
            # An existing PVC keeps downloaded weights across restarts and replicas (ReadWriteMany).
            {"name": "hf-cache", "persistentVolumeClaim": {"claimName": str(request.extra["weights_pvc"])}}
            if request.extra.get("weights_pvc")
            else {"name": "hf-cache", "emptyDir": {}},
        ],
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "automountServiceAccountToken": False,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    meta = {"name": name, "namespace": namespace, "labels": lbl}
    return {
        "secret": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "stringData": secret_data,
        },
        "deployment": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": max(1, request.min_workers),
                "selector": {"matchLabels": selector},
                # Replace one replica at a time without a surge: an update never needs a spare GPU.
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
            },
        },
        "service": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "type": str(request.extra.get("service_type", "ClusterIP")),
                "selector": selector,
                "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        },
    }


def _vllm(request: EndpointRequest, count: int) -> list[str]:
    from argosy.providers.templates.serverless import vllm_args

    max_len = request.extra.get("max_model_len")
    return vllm_args(
        request.model, served_name(request), gpu_count=count, max_model_len=int(max_len) if max_len else None
    )


def render_job(job: JobRequest, namespace: str) -> dict[str, Any]:
    name = resource_name(job.name)
    lbl = {MANAGED_LABEL: "true", JOB_LABEL: name}
    resources: dict[str, Any] = {
        "requests": {"cpu": job.cpu, "memory": job.memory},
        "limits": {"memory": job.memory},
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": "train",
                "image": job.image,
                "command": list(job.command),
                "env": [{"name": k, "value": v} for k, v in sorted(job.env.items())],
                "resources": resources,
            }
        ],
    }
    if job.gpu is not None:
        resources["requests"][GPU_RESOURCE] = str(job.gpu_count)
        resources["limits"][GPU_RESOURCE] = str(job.gpu_count)
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        if job.gpu in GPU_PRODUCTS:
            pod["nodeSelector"] = {GPU_PRODUCT_LABEL: GPU_PRODUCTS[job.gpu]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": lbl},
        "spec": {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": job.deadline_s,
            "template": {"metadata": {"labels": lbl}, "spec": pod},
        },
    }


def render_sandbox(sb: SandboxRequest, namespace: str) -> dict[str, Any]:
    name = resource_name(sb.name)
    lbl = {MANAGED_LABEL: "true", SANDBOX_LABEL: name}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": sb.timeout_s,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "run",
                "image": sb.image,
                "command": list(sb.command),
                "resources": {
                    "requests": {"cpu": sb.cpu, "memory": sb.memory},
                    "limits": {"cpu": sb.cpu, "memory": sb.memory},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if sb.runtime_class:
        spec["runtimeClassName"] = sb.runtime_class
    out: dict[str, Any] = {
        "pod": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": lbl},
            "spec": spec,
        }
    }
    if not sb.network:
        # No rules with both policy types = deny all ingress and egress for the selected pod.
        out["network_policy"] = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "labels": lbl},
            "spec": {
                "podSelector": {"matchLabels": {SANDBOX_LABEL: name}},
                "policyTypes": ["Ingress", "Egress"],
            },
        }
    return out


def to_yaml(*docs: Mapping[str, Any]) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(dict(d), sort_keys=False) for d in docs)


# -- the provider ----------------------------------------------------------------------------------


ClientFactory = Callable[[], Any]


class KubernetesProvider:
    name = PROVIDER

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        env: Mapping[str, str] | None = None,
        api_client: Any | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._env = environ(env)
        self.namespace = self._env.get("ARGOSY_K8S_NAMESPACE") or DEFAULT_NAMESPACE
        self._context = self._env.get("ARGOSY_K8S_CONTEXT") or None
        self._api_client = api_client  # tests pass one pointed at a fake API server

    # -- client and errors ----------------------------------------------------------------------
    def _client(self) -> Any:
        if self._api_client is not None:
            return self._api_client
        config = import_sdk(
            "kubernetes.config", "kubernetes", "the kubernetes provider needs the kubernetes client"
        )
        try:
            if self._env.get("KUBERNETES_SERVICE_HOST") and not self._context:
                config.load_incluster_config()
                from kubernetes import client

                self._api_client = client.ApiClient()
            else:
                self._api_client = config.new_client_from_config(
                    config_file=self._env.get("KUBECONFIG") or None, context=self._context
                )
        except config.ConfigException as exc:
            raise ProviderAuthError(
                f"{PROVIDER}: cannot load a cluster configuration: {exc}",
                fix="point KUBECONFIG at a kubeconfig (or run inside the cluster); pick a context with ARGOSY_K8S_CONTEXT",
                provider=PROVIDER,
            ) from exc
        return self._api_client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one API call and decode its JSON; turn ApiException into an error with a fix."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            resp = fn(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise _typed(what, exc) from exc
        except ValueError as exc:  # the client validates bodies against its models before sending
            raise ConfigError(
                f"{PROVIDER}: the manifest to {what} is invalid: {exc}",
                fix="this is a bug in the rendered manifest; report it with the `--dry-run` output",
            ) from exc
        except (HTTPError, OSError) as exc:
            raise ProviderError(
                f"{PROVIDER}: cannot reach the cluster API while trying to {what}: {exc}",
                fix="check `kubectl cluster-info` with the same KUBECONFIG/context",
                provider=PROVIDER,
            ) from exc
        data = resp.data
        return json.loads(data) if data else {}

    def _apis(self) -> tuple[Any, Any, Any, Any]:
        from kubernetes import client

        c = self._client()
        return client.CoreV1Api(c), client.AppsV1Api(c), client.BatchV1Api(c), client.NetworkingV1Api(c)

    # -- capabilities ---------------------------------------------------------------------------
    def preflight(self) -> list[CheckResult]:
        checks = []
        try:
            import kubernetes  # noqa: F401

            checks.append(CheckResult("kubernetes client", True, "installed"))
        except ImportError:
            return [
                CheckResult(
                    "kubernetes client", False, "not installed", fix="pip install 'argosy[kubernetes]'"
                )
            ]
        kubeconfig = self._env.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
        in_cluster = bool(self._env.get("KUBERNETES_SERVICE_HOST"))
        if (
            self._api_client is not None
            or in_cluster
            or any(Path(p).is_file() for p in kubeconfig.split(os.pathsep))
        ):
            checks.append(CheckResult("cluster config", True, "in-cluster" if in_cluster else kubeconfig))
        else:
            checks.append(
                CheckResult(
                    "cluster config",
                    False,
                    f"no kubeconfig at {kubeconfig} and not running in a cluster",
                    fix="export KUBECONFIG=/path/to/kubeconfig (and ARGOSY_K8S_CONTEXT=NAME to pick a context)",
                )
            )
            return checks
        core = self._apis()[0]
        try:
            self._call("read the namespace", core.read_namespace, self.namespace)
            checks.append(CheckResult("namespace", True, self.namespace))
        except NotFoundError:
            checks.append(
                CheckResult(
                    "namespace",
                    False,
                    f"namespace '{self.namespace}' does not exist",
                    fix=f"kubectl create namespace {self.namespace} (or export ARGOSY_K8S_NAMESPACE=...)",
                )
            )
        except ArgosyError as exc:
            checks.append(CheckResult("cluster access", False, exc.message, fix=exc.fix))
        return checks

    def offerings(self) -> list[Offering]:
        """The cluster's GPU nodes, live. Price unknown (your cluster's cost is yours to set)."""
        core = self._apis()[0]
        nodes = self._call("list nodes", core.list_node)
        when = iso(self.clock.now())
        out = []
        for n in nodes.get("items", []):
            meta, status = n.get("metadata", {}), n.get("status", {})
            gpus = int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0) or 0)
            product = (meta.get("labels") or {}).get(GPU_PRODUCT_LABEL)
            gpu = next((k for k, v in GPU_PRODUCTS.items() if v == product), product)
            out.append(
                Offering(
                    provider=PROVIDER,
                    region=(meta.get("labels") or {}).get("topology.kubernetes.io/region", "cluster"),
                    instance_type=str(meta.get("name")),
                    gpu=gpu if gpus else None,
                    gpu_count=gpus,
                    kind="vm",
                    price_per_hour=None,
                    source="kubernetes API: node allocatable",
                    fetched_at=when,
                )
            )
        return out

    def facts(self, request: EndpointRequest) -> EndpointFacts:
        price = request.extra.get("price_per_hour")
        return EndpointFacts(
            price_per_second=None if price is None else float(price) / 3600,
            price_source="your cluster's cost, from extra['price_per_hour']"
            if price is not None
            else "unknown for your own cluster; pass extra['price_per_hour']",
            cold_start=cold_start(request, PUBLISHED_COLD_START),
            auth_scheme="Authorization: Bearer <token from the endpoint's Secret> (vLLM --api-key)",
        )

    def plan_endpoint(self, request: EndpointRequest) -> Plan:
        ns = str(request.extra.get("namespace") or self.namespace)
        manifests = render_endpoint(request, ns)
        facts = self.facts(request)
        name = manifests["deployment"]["metadata"]["name"]
        hf_env = str(request.extra.get("hf_token_env") or "")
        # The token goes into the Secret at apply time only; the printed plan shows a placeholder.
        secrets = {"HF_TOKEN": self._env[hf_env]} if hf_env and self._env.get(hf_env) else {}
        return Plan(
            provider=PROVIDER,
            action="deploy",
            offering=request.offering,
            payload=manifests,
            artifacts={
                "manifests.yaml": to_yaml(manifests["secret"], manifests["deployment"], manifests["service"])
            },
            estimated_cost_per_hour=None
            if facts.price_per_second is None
            else facts.price_per_second * 3600 * max(1, request.min_workers),
            notes=[*facts.notes(), f"in-cluster URL: http://{name}.{ns}.svc.cluster.local:{VLLM_PORT}/v1"],
            secrets=secrets,
        )

    def deploy(self, plan: Plan) -> ServerlessEndpoint:
        secrets = {"API_KEY": plan.secrets.get("API_KEY") or new_token(), **plan.secrets}
        m = fill_secrets(plan.payload, secrets)
        core, apps, _, _ = self._apis()
        ns = m["deployment"]["metadata"]["namespace"]
        name = m["deployment"]["metadata"]["name"]
        try:
            self._call("create the endpoint secret", core.create_namespaced_secret, ns, m["secret"])
            self._call("create the deployment", apps.create_namespaced_deployment, ns, m["deployment"])
            self._call("create the service", core.create_namespaced_service, ns, m["service"])
        except ArgosyError:
            # A half-made endpoint is removed rather than left holding GPUs.
            self.destroy(f"{ns}/{name}")
            raise
        return self._endpoint(ns, name, state="deploying", token=secrets["API_KEY"])

    def endpoint_status(self, endpoint_id: str) -> ServerlessEndpoint:
        ns, name = _split(endpoint_id)
        core, apps, _, _ = self._apis()
        dep = self._call("read the deployment", apps.read_namespaced_deployment, name, ns)
        _check_managed(dep, endpoint_id)
        secret = self._call("read the endpoint secret", core.read_namespaced_secret, name, ns)
        svc = self._call("read the service", core.read_namespaced_service, name, ns)
        import base64

        token = base64.b64decode((secret.get("data") or {}).get("api-key", "")).decode()
        want = int(dep.get("spec", {}).get("replicas") or 0)
        ready = int(dep.get("status", {}).get("readyReplicas") or 0)
        state = "ready" if want and ready >= 1 else "deploying"
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        external = (ingress[0].get("ip") or ingress[0].get("hostname")) if ingress else None
        return self._endpoint(
            ns, name, state=state, token=token, external=external, detail=f"{ready}/{want} replicas ready"
        )

    def scale_endpoint(self, endpoint_id: str, replicas: int) -> None:
        """Set the replica count (Argosy's autoscaler decides; Kubernetes has no scale-to-zero of its own)."""
        ns, name = _split(endpoint_id)
        apps = self._apis()[1]
        _check_managed(
            self._call("read the deployment", apps.read_namespaced_deployment, name, ns), endpoint_id
        )
        self._call(
            "scale the deployment",
            apps.patch_namespaced_deployment_scale,
            name,
            ns,
            {"spec": {"replicas": max(0, int(replicas))}},
        )

    def destroy(self, endpoint_id: str) -> None:
        ns, name = _split(endpoint_id)
        core, apps, _, _ = self._apis()
        selector = f"{MANAGED_LABEL}=true,{ENDPOINT_LABEL}={name}"
        # Service first (stops traffic), then the Deployment (frees GPUs), then the Secret.
        for kind, lister, deleter in (
            ("service", core.list_namespaced_service, core.delete_namespaced_service),
            ("deployment", apps.list_namespaced_deployment, apps.delete_namespaced_deployment),
            ("secret", core.list_namespaced_secret, core.delete_namespaced_secret),
        ):
            self._delete_labelled(kind, ns, selector, lister, deleter)

    # -- training jobs ----------------------------------------------------------------------------
    def plan_job(self, job: JobRequest) -> Plan:
        manifest = render_job(job, job.namespace or self.namespace)
        return Plan(
            provider=PROVIDER,
            action="submit-job",
            offering=None,
            payload={"job": manifest},
            artifacts={"job.yaml": to_yaml(manifest)},
        )

    def submit_job(self, plan: Plan) -> str:
        job = plan.payload["job"]
        ns = job["metadata"]["namespace"]
        self._call("create the job", self._apis()[2].create_namespaced_job, ns, job)
        return f"{ns}/{job['metadata']['name']}"

    def job_status(self, job_id: str) -> str:
        """`running`, `succeeded` or `failed` (with the Job's own condition reason)."""
        ns, name = _split(job_id)
        job = self._call("read the job", self._apis()[2].read_namespaced_job, name, ns)
        _check_managed(job, job_id)
        st = job.get("status") or {}
        if st.get("succeeded"):
            return "succeeded"
        failed = [
            c for c in st.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"
        ]
        if failed:
            return f"failed: {failed[0].get('reason', '')} {failed[0].get('message', '')}".strip()
        return "running" if st.get("active") else "pending"

    def delete_job(self, job_id: str) -> None:
        ns, name = _split(job_id)
        batch = self._apis()[2]
        self._delete_labelled(
            "job",
            ns,
            f"{MANAGED_LABEL}=true,{JOB_LABEL}={name}",
            batch.list_namespaced_job,
            batch.delete_namespaced_job,
        )

    # -- sandboxes --------------------------------------------------------------------------------
    def plan_sandbox(self, sb: SandboxRequest) -> Plan:
        manifests = render_sandbox(sb, sb.namespace or self.namespace)
        notes = (
            []
            if sb.runtime_class
            else [
                "no RuntimeClass: the pod runs on the node's default runtime (runc); set runtime_class='gvisor' or 'kata' for a stronger boundary"
            ]
        )
        return Plan(
            provider=PROVIDER,
            action="run-sandbox",
            offering=None,
            payload=manifests,
            artifacts={"sandbox.yaml": to_yaml(*manifests.values())},
            notes=notes,
        )

    def run_sandbox(self, plan: Plan) -> str:
        core, _, _, net = self._apis()
        pod = plan.payload["pod"]
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            # The deny-all policy goes first so the pod never runs a moment with network.
            if "network_policy" in plan.payload:
                self._call(
                    "create the network policy",
                    net.create_namespaced_network_policy,
                    ns,
                    plan.payload["network_policy"],
                )
            self._call("create the sandbox pod", core.create_namespaced_pod, ns, pod)
        except ArgosyError:
            self.delete_sandbox(f"{ns}/{name}")
            raise
        return f"{ns}/{name}"

    def sandbox_status(self, sandbox_id: str) -> str:
        ns, name = _split(sandbox_id)
        pod = self._call("read the sandbox pod", self._apis()[0].read_namespaced_pod, name, ns)
        _check_managed(pod, sandbox_id)
        return str((pod.get("status") or {}).get("phase", "Unknown")).lower()

    def delete_sandbox(self, sandbox_id: str) -> None:
        ns, name = _split(sandbox_id)
        core, _, _, net = self._apis()
        selector = f"{MANAGED_LABEL}=true,{SANDBOX_LABEL}={name}"
        self._delete_labelled("pod", ns, selector, core.list_namespaced_pod, core.delete_namespaced_pod)
        self._delete_labelled(
            "network policy",
            ns,
            selector,
            net.list_namespaced_network_policy,
            net.delete_namespaced_network_policy,
        )

    # -- helpers ----------------------------------------------------------------------------------
    def _delete_labelled(
        self, kind: str, ns: str, selector: str, lister: Callable[..., Any], deleter: Callable[..., Any]
    ) -> None:
        items = self._call(f"list {kind}s", lister, ns, label_selector=selector).get("items", [])
        for item in items:
            try:
                # Foreground: a Deployment's/Job's pods are gone before the call reports done.
                self._call(
                    f"delete {kind} {item['metadata']['name']}",
                    deleter,
                    item["metadata"]["name"],
                    ns,
                    propagation_policy="Foreground",
                )
            except NotFoundError:
                continue  # deleted by someone else meanwhile: that is the goal anyway

    def _endpoint(
        self, ns: str, name: str, *, state: str, token: str, external: str | None = None, detail: str = ""
    ) -> ServerlessEndpoint:
        host = external or f"{name}.{ns}.svc.cluster.local"
        return ServerlessEndpoint(
            provider=PROVIDER,
            endpoint_id=f"{ns}/{name}",
            name=name,
            state=state,
            url=f"http://{host}:{VLLM_PORT}/v1",
            auth_header=bearer(token) if token else {},
            price_per_second=None,
            cold_start_s=PUBLISHED_COLD_START.seconds,
            cold_start_source=PUBLISHED_COLD_START.source,
            auth_scheme="Authorization: Bearer <token from the endpoint's Secret>",
            resources={"secret": f"{ns}/{name}", "deployment": f"{ns}/{name}", "service": f"{ns}/{name}"},
            detail=detail,
        )


def _split(ident: str) -> tuple[str, str]:
    ns, sep, name = ident.partition("/")
    if not sep or not ns or not name:
        raise ConfigError(
            f"'{ident}' is not a kubernetes id", fix="use NAMESPACE/NAME, as returned by deploy"
        )
    return ns, name


def _check_managed(obj: Mapping[str, Any], ident: str) -> None:
    if (obj.get("metadata", {}).get("labels") or {}).get(MANAGED_LABEL) != "true":
        raise ArgosyError(
            f"{PROVIDER}: {ident} was not created by Argosy", fix="manage it with kubectl instead"
        )


def _typed(what: str, exc: Any) -> ArgosyError:
    status = int(getattr(exc, "status", 0) or 0)
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    msg = body.get("message") or getattr(exc, "reason", "") or str(exc)
    text = f"{PROVIDER}: cannot {what}: {msg}"
    if status == 401:
        return ProviderAuthError(
            text, fix="refresh your cluster credentials (kubeconfig user/token)", provider=PROVIDER
        )
    if status == 403 and "exceeded quota" in msg:
        return QuotaError(
            text, fix="raise the namespace ResourceQuota or lower replicas/GPUs", provider=PROVIDER
        )
    if status == 403:
        return ProviderAuthError(
            text,
            fix="grant the kubeconfig user create/get/list/delete on deployments, services, secrets, jobs, pods and networkpolicies in the namespace",
            provider=PROVIDER,
        )
    if status == 404:
        return NotFoundError(
            text, fix="check the namespace exists (`kubectl get ns`) and the id is NAMESPACE/NAME"
        )
    if status == 409:
        return ConflictError(text, fix="destroy the existing one first, or pick another name")
    if status == 422:
        return ConfigError(
            text,
            fix="the rendered manifest was rejected; check `--dry-run` output against your cluster version",
        )
    return ProviderError(text, fix="retry; check `kubectl get events -n NAMESPACE`", provider=PROVIDER)
