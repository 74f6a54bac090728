"""Node bootstrap rendering, byte for byte against golden files (UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from argosy.providers.bootstrap import (
    AGENT_ENV_PATH,
    UNIT_PATH,
    BootstrapSpec,
    render_cloud_init,
    render_startup_script,
)

GOLDEN = Path(__file__).parent / "golden"
SPEC = BootstrapSpec(
    server_url="https://argosy.example.com:8750",
    agent_token="reg-tok-0123456789abcdef",
    node_name="argosy-llama-1",
    pip_spec="argosy==0.1.0",
    gpu_count=2,
    labels=(("deployment", "llama"),),
    provider="aws",
    preemptible=True,
)
CASES = {
    "cloud-init-gpu.yaml": lambda: render_cloud_init(SPEC),
    "cloud-init-install-driver.yaml": lambda: render_cloud_init(
        BootstrapSpec(
            **{**SPEC.__dict__, "install_nvidia_driver": True, "pip_index_url": "https://pypi.example/simple"}
        )
    ),
    "startup-script-systemd.sh": lambda: render_startup_script(SPEC),
    "startup-script-container.sh": lambda: render_startup_script(
        BootstrapSpec(
            **{**SPEC.__dict__, "gpu_count": 0, "pip_spec": "git+https://github.com/example/argosy@v0.1.0"}
        ),
        foreground=True,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_render_matches_golden(name):
    rendered = CASES[name]()
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert rendered == path.read_text()


def test_cloud_init_is_valid_yaml_with_a_root_only_token_file():
    doc = yaml.safe_load(render_cloud_init(SPEC))
    files = {f["path"]: f for f in doc["write_files"]}
    env = files[AGENT_ENV_PATH]
    assert env["permissions"] == "0600" and "ARGOSY_AGENT_TOKEN=reg-tok-0123456789abcdef" in env["content"]
    unit = files[UNIT_PATH]["content"]
    assert (
        "ExecStart=/opt/argosy/bin/argosy agent --server ${ARGOSY_SERVER} --token ${ARGOSY_AGENT_TOKEN}"
        in unit
    )
    # The token reaches the agent through the root-only env file, never through a world-readable unit.
    assert "reg-tok" not in unit


@pytest.mark.parametrize("name", sorted(CASES))
def test_scripts_parse_in_bash(name, tmp_path):
    rendered = CASES[name]()
    script = yaml.safe_load(rendered)["write_files"][2]["content"] if name.endswith(".yaml") else rendered
    f = tmp_path / "s.sh"
    f.write_text(script)
    subprocess.run(["bash", "-n", str(f)], check=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("server_url", "ftp://x"),
        ("agent_token", "a'b"),
        ("agent_token", ""),
        ("pip_spec", "argosy; rm -rf /"),
    ],
)
def test_unsafe_values_are_refused(field, value):
    with pytest.raises(ValueError):
        render_cloud_init(BootstrapSpec(**{**SPEC.__dict__, field: value}))
