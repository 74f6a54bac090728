"""Sandbox settings. Strict like the rest of Argosy's config: unknown keys are errors.

Not yet a key of the global Settings (argosy/core/config.py belongs to the core); until it is,
`SandboxConfig.from_env()` reads ARGOSY_SANDBOX_* variables over the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from argosy.core.errors import ConfigError

# The uid/gid sandboxed code runs as on the host when the agent is root ("nobody" on Debian).
NOBODY = 65534
# The microvm backend's VMM: `auto` takes the first of Firecracker, QEMU+KVM, QEMU+TCG that passes
# its checks and its recorded smoke boot; `qemu` is QEMU with KVM if that booted, else TCG.
VMMS = ("auto", "firecracker", "qemu", "qemu-kvm", "qemu-tcg")


def default_base_dir() -> Path:
    """Run and session work dirs live on tmpfs (/dev/shm) when there is one: memory-backed, gone at reboot."""
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/tmp")
    return root / f"argosy-sandbox-{os.getuid()}"


def default_image_dir() -> Path:
    """Built VM images are cached with the engines: ARGOSY_CACHE_DIR, else ARGOSY_HOME/cache."""
    cache = os.environ.get("ARGOSY_CACHE_DIR")
    if cache:
        return Path(cache).expanduser() / "sandbox"
    return Path(os.environ.get("ARGOSY_HOME", "~/.argosy")).expanduser() / "cache" / "sandbox"


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = "namespaces"
    base_dir: Path = Field(default_factory=default_base_dir)
    image_dir: Path = Field(default_factory=default_image_dir, description="microVM kernel and initramfs")
    uid: int = Field(NOBODY, ge=1, description="Host uid for sandboxed code when the agent runs as root")
    gid: int = Field(NOBODY, ge=1)
    max_concurrent: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    max_queue: int = Field(16, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0)
    pool: dict[str, int] = Field(default_factory=dict, description="Pre-warmed sandboxes per language")
    session_ttl_max_s: float = Field(24 * 3600.0, gt=0)
    reap_interval_s: float = Field(5.0, gt=0)
    # On the server: run sandboxes on its own machine when no agent with the sandbox role is
    # registered. Off (ARGOSY_SANDBOX_LOCAL_FALLBACK=0) keeps untrusted code off the control plane.
    local_fallback: bool = True
    # Pooled Python sandboxes pre-start their interpreter (argosy/sandbox/zygote.py).
    zygote: bool = True
    # Host paths visible read-only inside; everything else (home dirs, /var, /srv, the server's
    # database) is absent. Entries that do not exist on the node are skipped.
    ro_paths: list[str] = ["/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    # Files inside ro_paths replaced by an empty file.
    masked_paths: list[str] = ["/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/ssh"]
    vmm: str = Field("auto", description="microvm VMM: " + "|".join(VMMS))
    # Else `firecracker` on PATH.
    firecracker_binary: Path | None = None

    @field_validator("vmm")
    @classmethod
    def _known_vmm(cls, v: str) -> str:
        if v not in VMMS:
            raise ValueError(f"vmm {v!r} is not one of {', '.join(VMMS)}")
        return v

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> SandboxConfig:
        env = dict(os.environ) if env is None else env
        data: dict[str, object] = {}
        simple = {
            "ARGOSY_SANDBOX_BACKEND": "backend",
            "ARGOSY_SANDBOX_DIR": "base_dir",
            "ARGOSY_SANDBOX_MAX_CONCURRENT": "max_concurrent",
            "ARGOSY_SANDBOX_MAX_QUEUE": "max_queue",
            "ARGOSY_SANDBOX_LOCAL_FALLBACK": "local_fallback",
            "ARGOSY_SANDBOX_ZYGOTE": "zygote",
            "ARGOSY_SANDBOX_VMM": "vmm",
            "ARGOSY_SANDBOX_FIRECRACKER": "firecracker_binary",
        }
        for var, key in simple.items():
            if env.get(var):
                data[key] = env[var]
        if env.get("ARGOSY_SANDBOX_POOL"):
            # "python=2,node=1"
            try:
                data["pool"] = {
                    k: int(v) for k, v in (p.split("=") for p in env["ARGOSY_SANDBOX_POOL"].split(","))
                }
            except ValueError as exc:
                raise ConfigError(
                    f"ARGOSY_SANDBOX_POOL='{env['ARGOSY_SANDBOX_POOL']}' is not LANG=N[,LANG=N]",
                    fix="e.g. ARGOSY_SANDBOX_POOL=python=2,node=1",
                ) from exc
        data.update(overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(
                f"invalid sandbox configuration: {exc}", fix="check the ARGOSY_SANDBOX_* variables"
            ) from exc
