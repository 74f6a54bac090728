"""Node bootstrap: what a fresh cloud machine runs on first boot to become an Argosy node.

Pure functions of a `BootstrapSpec`; the output is what `plan()` prints and what providers send, so
it is tested byte for byte (tests/providers/golden/). Two shapes:

- `render_cloud_init`: a `#cloud-config` document for VMs (Lambda, Linode, AWS user data) that
  writes the agent's settings, a systemd unit and a setup script, then runs the script.
- `render_startup_script`: the same setup as one bash script, for clouds that take a script
  (GCP `startup-script` metadata) and, with `foreground=True`, for containers without systemd
  (RunPod pods, Vast.ai instances) where the agent must run as the container's main process.

The agent contract (owned by the agent): `argosy agent --server URL --token TOKEN`. The token is a
one-time registration token: the server exchanges it for a node credential on first contact and
then rejects it, so the copy in user data is worthless after the first boot. It is written to a
root-only file (0600) and passed to the unit through `EnvironmentFile`, never through a world-
readable path. NVIDIA checks fail the bootstrap loudly: an agent that never registers is marked
failed and terminated by the server's registration deadline rather than left billing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from argosy import __version__

AGENT_ENV_PATH = "/etc/argosy/agent.env"
SETUP_PATH = "/usr/local/lib/argosy/setup.sh"
UNIT_PATH = "/etc/systemd/system/argosy-agent.service"
VENV = "/opt/argosy"
LOG_PATH = "/var/log/argosy-setup.log"

# Characters that could break out of the env file, the YAML block or the shell quoting.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f'\"\\`$]")


def default_pip_spec() -> str:
    """Install the same Argosy version as the control plane, so agent and server speak one protocol."""
    return f"argosy=={__version__}"


@dataclass(frozen=True)
class BootstrapSpec:
    server_url: str
    agent_token: str
    node_name: str
    pip_spec: str = ""  # what `pip install` gets: "argosy==0.1.0", a git URL, a wheel URL
    pip_index_url: str | None = None
    gpu_count: int = 0  # GPUs the machine must show in nvidia-smi before the agent starts
    python: str = "python3"
    install_nvidia_driver: bool = False  # for images without a driver (Linode's Ubuntu)
    provider: str = ""  # lets the agent poll the right preemption notice (argosy.providers.preemption)
    preemptible: bool = False  # spot/interruptible: the agent should watch for reclaim notices
    labels: tuple[tuple[str, str], ...] = ()

    def pip(self) -> str:
        return self.pip_spec or default_pip_spec()


def validate(spec: BootstrapSpec) -> None:
    """Reject values that would break the rendered files; a message for the person who set them."""
    for field, value in (
        ("server_url", spec.server_url),
        ("agent_token", spec.agent_token),
        ("node_name", spec.node_name),
        ("pip_spec", spec.pip()),
        ("pip_index_url", spec.pip_index_url or ""),
        ("provider", spec.provider),
    ):
        if _UNSAFE.search(value) or " " in value:
            raise ValueError(
                f"bootstrap {field} contains a quote, space, backslash, '$' or control character"
            )
    if not spec.server_url.startswith(("http://", "https://")):
        raise ValueError("bootstrap server_url must start with http:// or https:// (the agent dials it)")
    if not spec.agent_token:
        raise ValueError("bootstrap needs a registration token; the server issues one per node")
    for k, v in spec.labels:
        if _UNSAFE.search(k + v) or " " in k + v or "=" in k:
            raise ValueError(f"bootstrap label {k!r} has characters that cannot go in an env file")


def agent_env(spec: BootstrapSpec) -> str:
    """The agent's environment file (root-only)."""
    lines = [
        f"ARGOSY_SERVER={spec.server_url}",
        f"ARGOSY_AGENT_TOKEN={spec.agent_token}",
        f"ARGOSY_NODE_NAME={spec.node_name}",
    ]
    if spec.provider:
        lines.append(f"ARGOSY_PROVIDER={spec.provider}")
    if spec.preemptible:
        lines.append("ARGOSY_PREEMPTIBLE=1")
    if spec.labels:
        lines.append("ARGOSY_NODE_LABELS=" + ",".join(f"{k}={v}" for k, v in spec.labels))
    return "\n".join(lines) + "\n"


def agent_unit() -> str:
    """The systemd unit. `${VAR}` in ExecStart is expanded by systemd from EnvironmentFile."""
    return f"""[Unit]
Description=Argosy node agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
EnvironmentFile={AGENT_ENV_PATH}
ExecStart={VENV}/bin/argosy agent --server ${{ARGOSY_SERVER}} --token ${{ARGOSY_AGENT_TOKEN}}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def _setup_body(spec: BootstrapSpec) -> list[str]:
    """Shell lines shared by every shape: GPU check, then install Argosy into its own venv."""
    index = f" --index-url {shlex.quote(spec.pip_index_url)}" if spec.pip_index_url else ""
    lines = [
        "set -euo pipefail",
        f"exec >>{LOG_PATH} 2>&1",
        'echo "argosy setup: start $(date -u +%FT%TZ)"',
    ]
    if spec.gpu_count > 0 and spec.install_nvidia_driver:
        lines += [
            "# This image has no NVIDIA driver: install Ubuntu's recommended one and load it without a reboot.",
            "if ! command -v nvidia-smi >/dev/null 2>&1; then",
            "  export DEBIAN_FRONTEND=noninteractive",
            "  apt-get update -q",
            "  apt-get install -y -q ubuntu-drivers-common",
            "  ubuntu-drivers install",
            "  modprobe nvidia",
            "fi",
        ]
    if spec.gpu_count > 0:
        lines += [
            "# The driver must work before the agent starts, or the engine would fall back to CPU silently.",
            "# Some images (GCP Deep Learning VMs) install it during first boot: wait up to 10 minutes.",
            "for _ in $(seq 60); do",
            "  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then break; fi",
            "  sleep 10",
            "done",
            "if ! command -v nvidia-smi >/dev/null 2>&1; then",
            '  echo "argosy setup: nvidia-smi not found: the image has no NVIDIA driver" >&2',
            "  exit 1",
            "fi",
            "found=$(nvidia-smi -L | grep -c '^GPU ' || true)",
            f'if [ "$found" -lt {spec.gpu_count} ]; then',
            f'  echo "argosy setup: expected {spec.gpu_count} GPU(s), nvidia-smi shows $found" >&2',
            "  exit 1",
            "fi",
        ]
    lines += [
        "# Debian and Ubuntu split venv's pip bootstrap (ensurepip) into python3-venv.",
        f"if ! {spec.python} -c 'import ensurepip, venv' >/dev/null 2>&1; then",
        "  if command -v apt-get >/dev/null 2>&1; then",
        "    export DEBIAN_FRONTEND=noninteractive",
        "    apt-get update -q",
        "    apt-get install -y -q python3-venv",
        "  fi",
        "fi",
        f"[ -x {VENV}/bin/pip ] || {spec.python} -m venv {VENV}",
        f"{VENV}/bin/pip install --quiet --upgrade pip",
        f"{VENV}/bin/pip install --quiet{index} {shlex.quote(spec.pip())}",
    ]
    return lines


def render_cloud_init(spec: BootstrapSpec) -> str:
    """A `#cloud-config` document: settings file, systemd unit, setup script, run once."""
    validate(spec)
    setup = "\n".join(
        [
            "#!/bin/bash",
            *_setup_body(spec),
            "systemctl daemon-reload",
            "systemctl enable --now argosy-agent.service",
            'echo "argosy setup: agent started"',
        ]
    )

    def block(text: str) -> str:
        return "\n".join(("      " + line) if line else "" for line in text.rstrip("\n").split("\n"))

    return (
        "#cloud-config\n"
        f"# Argosy node bootstrap for {spec.node_name} (rendered by argosy {__version__}).\n"
        "write_files:\n"
        f"  - path: {AGENT_ENV_PATH}\n"
        "    owner: root:root\n"
        "    permissions: '0600'\n"
        "    content: |\n"
        f"{block(agent_env(spec))}\n"
        f"  - path: {UNIT_PATH}\n"
        "    owner: root:root\n"
        "    permissions: '0644'\n"
        "    content: |\n"
        f"{block(agent_unit())}\n"
        f"  - path: {SETUP_PATH}\n"
        "    owner: root:root\n"
        "    permissions: '0755'\n"
        "    content: |\n"
        f"{block(setup)}\n"
        "runcmd:\n"
        f"  - [{SETUP_PATH}]\n"
    )


def render_startup_script(spec: BootstrapSpec, *, foreground: bool = False) -> str:
    """One bash script doing what the cloud-config does.

    `foreground=False` (VMs with systemd, e.g. GCP startup-script): install the unit and start it.
    `foreground=True` (containers): start the agent in the background of the container's start
    command under a restart loop, since there is no init system; its log is /var/log/argosy-agent.log.
    """
    validate(spec)
    env_lines = agent_env(spec).rstrip("\n")
    head = [
        "#!/bin/bash",
        f"# Argosy node bootstrap for {spec.node_name} (rendered by argosy {__version__}).",
        "umask 077",
        f"mkdir -p {AGENT_ENV_PATH.rsplit('/', 1)[0]}",
        f"cat >{AGENT_ENV_PATH} <<'ARGOSY_ENV'",
        env_lines,
        "ARGOSY_ENV",
        "umask 022",
        f"mkdir -p {LOG_PATH.rsplit('/', 1)[0]}",
    ]
    body = _setup_body(spec)
    if foreground:
        tail = [
            "set -a",
            f". {AGENT_ENV_PATH}",
            "set +a",
            "# No init system in a container: a restart loop stands in for systemd's Restart=always.",
            "nohup bash -c 'while true; do "
            f'{VENV}/bin/argosy agent --server "$ARGOSY_SERVER" --token "$ARGOSY_AGENT_TOKEN"; '
            "sleep 5; done' >>/var/log/argosy-agent.log 2>&1 &",
            'echo "argosy setup: agent started"',
        ]
    else:
        tail = [
            f"cat >{UNIT_PATH} <<'ARGOSY_UNIT'",
            agent_unit().rstrip("\n"),
            "ARGOSY_UNIT",
            "systemctl daemon-reload",
            "systemctl enable --now argosy-agent.service",
            'echo "argosy setup: agent started"',
        ]
    return "\n".join([*head, *body, *tail]) + "\n"
