"""The provider registry. Add a provider by adding one line here (or an `argosy.providers` entry point)."""

from __future__ import annotations

from typing import Any

from argosy.core.clock import Clock, SystemClock
from argosy.core.config import Settings
from argosy.core.registry import Entry, Registry

PROVIDERS = Registry(
    kind="provider",
    entry_point_group="argosy.providers",
    entries={
        "local": Entry("argosy.providers.local:LocalProvider", summary="this machine, real processes"),
        "fake": Entry(
            "argosy.providers.fake:FakeProvider", summary="in-memory, clock-driven, fault injection"
        ),
        "lambda": Entry("argosy.providers.lambda_cloud:LambdaProvider", summary="Lambda Cloud GPU VMs"),
        "runpod": Entry("argosy.providers.runpod:RunPodProvider", summary="RunPod GPU pods, spot too"),
        "vast": Entry("argosy.providers.vast:VastProvider", summary="Vast.ai marketplace, on-demand and bid"),
        "linode": Entry("argosy.providers.linode:LinodeProvider", extra="linode", summary="Linode GPUs"),
        "gcp": Entry("argosy.providers.gcp:GcpProvider", extra="gcp", summary="GCP GPU VMs, spot too"),
        "aws": Entry("argosy.providers.aws:AwsProvider", extra="aws", summary="AWS EC2 GPUs, spot too"),
        "modal": Entry(
            "argosy.providers.modal:ModalProvider", extra="modal", summary="Modal serverless GPUs (vLLM app)"
        ),
        "runpod-serverless": Entry(
            "argosy.providers.runpod_serverless:RunpodServerlessProvider",
            summary="RunPod Serverless vLLM workers",
        ),
        "baseten": Entry(
            "argosy.providers.baseten:BasetenProvider", extra="baseten", summary="Baseten (Truss, vLLM)"
        ),
        "cloudrun": Entry(
            "argosy.providers.cloudrun:CloudRunProvider", extra="gcp", summary="Google Cloud Run with L4 GPUs"
        ),
        "skypilot": Entry(
            "argosy.providers.skypilot:SkyPilotProvider", extra="skypilot", summary="SkyServe spot replicas"
        ),
        "kubernetes": Entry(
            "argosy.providers.kubernetes:KubernetesProvider",
            extra="kubernetes",
            summary="your Kubernetes cluster",
        ),
    },
)


def get_provider(name: str, settings: Settings, clock: Clock | None = None) -> Any:
    """An instance of provider `name`; providers take (settings, clock)."""
    cls = PROVIDERS.load(name)
    return cls(settings=settings, clock=clock or SystemClock())
