"""The `local` provider: this machine as one node, run by a real agent process.

There is only one local machine, so `plan()` names a fixed instance id and callers reuse a live
node for it instead of provisioning again. `terminate` stops the agent, which stops its workloads.
"""

from __future__ import annotations

import os
import shutil
import sys

from argosy.catalog.types import Offering
from argosy.core import proc
from argosy.core.clock import Clock, iso
from argosy.core.config import Settings
from argosy.core.errors import NotFoundError, ProviderError
from argosy.core.host import detect_gpus
from argosy.providers.base import CheckResult, Instance, InstanceRequest, Plan

INSTANCE_ID = "local"


class LocalProvider:
    name = "local"
    # Its one node is this machine, with this ARGOSY_HOME: jobs use the server's paths as they are.
    shares_server_filesystem = True

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    # -- Offerings ---------------------------------------------------------------------------
    def offerings(self) -> list[Offering]:
        cfg = self.settings.providers.local
        today = iso(self.clock.now())  # read now: this machine's offering is always current
        cpus = os.cpu_count() or 1
        import psutil

        ram = round(psutil.virtual_memory().total / 2**30, 1)
        out = [
            Offering(
                provider="local",
                region="local",
                instance_type="cpu",
                gpu=None,
                gpu_count=0,
                kind="local",
                price_per_hour=cfg.price_per_hour,
                vcpus=cpus,
                ram_gb=ram,
                per_second_billing=True,
                source="this machine; price from providers.local.price_per_hour",
                fetched_at=today,
            )
        ]
        gpus = detect_gpus()
        if gpus:
            out.append(
                Offering(
                    provider="local",
                    region="local",
                    instance_type=f"gpu-{len(gpus)}x",
                    gpu=gpus[0]["name"],
                    gpu_count=len(gpus),
                    kind="local",
                    price_per_hour=cfg.gpu_price_per_hour,
                    vcpus=cpus,
                    ram_gb=ram,
                    per_second_billing=True,
                    source="nvidia-smi on this machine; price from providers.local.gpu_price_per_hour",
                    fetched_at=today,
                )
            )
        return out

    # -- Preflight -----------------------------------------------------------------------------
    def preflight(self) -> list[CheckResult]:
        home = self.settings.home
        free_gb = shutil.disk_usage(home if home.exists() else home.parent).free / 2**30
        return [
            CheckResult(
                "python", sys.version_info >= (3, 11), sys.version.split()[0], "install Python 3.11 or newer"
            ),
            CheckResult(
                "disk",
                free_gb >= 2,
                f"{free_gb:.1f} GiB free under {home}",
                "free some disk space or point ARGOSY_HOME at a bigger disk",
            ),
        ]

    # -- Instances -----------------------------------------------------------------------------
    def _pidfile(self):  # type: ignore[no-untyped-def]
        return self.settings.run_dir / "agent-local.pid"

    def plan(self, request: InstanceRequest) -> Plan:
        argv = [
            sys.executable,
            "-m",
            "argosy",
            "agent",
            "--server",
            request.server_url,
            "--name",
            request.name,
        ]
        return Plan(
            provider=self.name,
            action="provision",
            offering=request.offering,
            payload={
                "instance_id": INSTANCE_ID,
                "argv": argv,
                "log": str(self.settings.logs_dir / "agent-local.log"),
            },
            estimated_cost_per_hour=request.offering.price_per_hour,
            notes=["runs an agent process on this machine"],
            secrets={"ARGOSY_AGENT_TOKEN": request.agent_token},
        )

    def provision(self, plan: Plan) -> Instance:
        self.terminate(INSTANCE_ID)  # at most one local agent: a stale one would fight the new one
        env = {**os.environ, **plan.secrets, "ARGOSY_HOME": str(self.settings.home)}
        from pathlib import Path

        try:
            p = proc.spawn(list(plan.payload["argv"]), Path(plan.payload["log"]), env=env)
        except OSError as exc:
            raise ProviderError(f"could not start the local agent: {exc}", provider=self.name) from exc
        proc.write_pidfile(self._pidfile(), p.pid)
        return self.status(INSTANCE_ID)

    def status(self, instance_id: str) -> Instance:
        if instance_id != INSTANCE_ID:
            raise NotFoundError(f"the local provider has no instance '{instance_id}'")
        pid = proc.read_pidfile(self._pidfile())
        state = "running" if proc.alive(pid) else "terminated"
        return Instance(
            provider=self.name,
            instance_id=INSTANCE_ID,
            name="local",
            state=state,  # type: ignore[arg-type]
            region="local",
            address="127.0.0.1",
            price_per_hour=self.settings.providers.local.price_per_hour,
            reason="" if state == "running" else "the local agent is not running",
        )

    def list(self) -> list[Instance]:
        inst = self.status(INSTANCE_ID)
        return [inst] if inst.state == "running" else []

    def terminate(self, instance_id: str) -> None:
        if instance_id != INSTANCE_ID:
            return
        proc.stop(proc.read_pidfile(self._pidfile()), timeout=20)
        self._pidfile().unlink(missing_ok=True)
