#!/bin/bash
# Argosy node bootstrap for argosy-llama-1 (rendered by argosy 0.1.0).
umask 077
mkdir -p /etc/argosy
cat >/etc/argosy/agent.env <<'ARGOSY_ENV'
ARGOSY_SERVER=https://argosy.example.com:8750
ARGOSY_AGENT_TOKEN=reg-tok-0123456789abcdef
ARGOSY_NODE_NAME=argosy-llama-1
ARGOSY_PROVIDER=aws
ARGOSY_PREEMPTIBLE=1
ARGOSY_NODE_LABELS=deployment=llama
ARGOSY_ENV
umask 022
mkdir -p /var/log
set -euo pipefail
exec >>/var/log/argosy-setup.log 2>&1
echo "argosy setup: start $(date -u +%FT%TZ)"
# The driver must work before the agent starts, or the engine would fall back to CPU silently.
# Some images (GCP Deep Learning VMs) install it during first boot: wait up to 10 minutes.
for _ in $(seq 60); do
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then break; fi
  sleep 10
done
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "argosy setup: nvidia-smi not found: the image has no NVIDIA driver" >&2
  exit 1
fi
found=$(nvidia-smi -L | grep -c '^GPU ' || true)
if [ "$found" -lt 2 ]; then
  echo "argosy setup: expected 2 GPU(s), nvidia-smi shows $found" >&2
  exit 1
fi
# Debian and Ubuntu split venv's pip bootstrap (ensurepip) into python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q python3-venv
  fi
fi
[ -x /opt/argosy/bin/pip ] || python3 -m venv /opt/argosy
/opt/argosy/bin/pip install --quiet --upgrade pip
/opt/argosy/bin/pip install --quiet argosy==0.1.0
cat >/etc/systemd/system/argosy-agent.service <<'ARGOSY_UNIT'
[Unit]
Description=Argosy node agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
EnvironmentFile=/etc/argosy/agent.env
ExecStart=/opt/argosy/bin/argosy agent --server ${ARGOSY_SERVER} --token ${ARGOSY_AGENT_TOKEN}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
ARGOSY_UNIT
systemctl daemon-reload
systemctl enable --now argosy-agent.service
echo "argosy setup: agent started"
