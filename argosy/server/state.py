"""What the server process holds: settings, store, clock, providers and the reconcilers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from argosy.core.clock import Clock, SystemClock
from argosy.core.config import Settings
from argosy.providers.registry import get_provider
from argosy.serve.reconciler import DeploymentReconciler
from argosy.serve.routers import ProcessRouters, RouterManager
from argosy.store.db import Store
from argosy.train.reconciler import TrainReconciler, TrainWorkloads

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    settings: Settings
    store: Store
    server_url: str
    clock: Clock = field(default_factory=SystemClock)
    routers: RouterManager | None = None
    _providers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.routers is None:
            self.routers = ProcessRouters(self.settings)
        self.deployments = DeploymentReconciler(
            self.store, self.clock, self.provider, self.routers, self.server_url
        )
        self.train = TrainReconciler(self.store, self.clock, self.provider, self.server_url)
        # Workload kinds besides replicas that ride on agent heartbeats (fleet/nodes.heartbeat).
        self.workload_sources: list[Any] = [TrainWorkloads()]

    def provider(self, name: str) -> Any:
        """Providers are created once per server so stateful ones (fake) keep their state."""
        if name not in self._providers:
            self._providers[name] = get_provider(name, self.settings, self.clock)
        return self._providers[name]
