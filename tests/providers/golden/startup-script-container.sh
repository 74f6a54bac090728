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
/opt/argosy/bin/pip install --quiet git+https://github.com/example/argosy@v0.1.0
set -a
. /etc/argosy/agent.env
set +a
# No init system in a container: a restart loop stands in for systemd's Restart=always.
nohup bash -c 'while true; do /opt/argosy/bin/argosy agent --server "$ARGOSY_SERVER" --token "$ARGOSY_AGENT_TOKEN"; sleep 5; done' >>/var/log/argosy-agent.log 2>&1 &
echo "argosy setup: agent started"
