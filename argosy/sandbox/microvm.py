"""The `microvm` isolation backend: what this node has for it, and why it cannot run yet.

Not built in this version: booting a VM per run (Firecracker with a working /dev/kvm, else QEMU's
`-M microvm`, KVM or TCG) with an image from `argosy sandbox build-image`. Until it is, the backend
reports itself unavailable with the facts that matter for it, so `argosy sandbox doctor` never
claims a protection the node does not give, and asking for it fails with a way out.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import BackendUnavailableError
from argosy.sandbox.namespaces import Check

NOT_BUILT = "the microvm runner is not implemented in this Argosy version"


class MicroVMBackend:
    name = "microvm"
    summary = "one VM per run (Firecracker or QEMU microvm): not implemented yet"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config

    def checks(self) -> list[Check]:
        kvm = Path("/dev/kvm")
        qemu = shutil.which("qemu-system-x86_64")
        firecracker = shutil.which("firecracker")
        image = self.config.base_dir / "images" / "microvm"
        return [
            Check("runner", False, NOT_BUILT),
            Check(
                "/dev/kvm",
                kvm.exists() and os.access(kvm, os.R_OK | os.W_OK),
                "present" if kvm.exists() else "absent",
            ),
            Check("firecracker", firecracker is not None, firecracker or "not installed"),
            Check("qemu", qemu is not None, qemu or "not installed (apt-get install qemu-system-x86)"),
            Check("image", image.exists(), str(image) if image.exists() else "not built"),
        ]

    def available(self) -> tuple[bool, str]:
        return False, NOT_BUILT

    def require(self) -> None:
        raise BackendUnavailableError(
            f"isolation backend 'microvm' is unavailable: {NOT_BUILT}",
            fix="use the default 'namespaces' backend (ARGOSY_SANDBOX_BACKEND=namespaces)",
        )
