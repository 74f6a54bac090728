"""Router configuration: the strict `router.yaml` schema and the CLI flags that build the same object.

Unknown keys are errors naming the key, the file and line, and the nearest valid key, the same way
`argosy.core.config` reports `argosy.yaml` mistakes (pydantic `extra="forbid"` plus YAML node lines).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from argosy.core.config import _line_of
from argosy.core.errors import ConfigError, did_you_mean

Tier = Literal["primary", "fallback"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendSpec(_Strict):
    """One upstream: a replica (`primary`) or a serverless endpoint (`fallback`)."""

    name: str = ""
    url: str
    tier: Tier = "primary"
    weight: float = Field(1.0, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    headers: dict[str, str] = {}
    probe: bool = Field(True, description="Actively probe /health; off for endpoints billed per request.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{v}' is not an http(s) URL like http://127.0.0.1:8000")
        if parts.query or parts.fragment:
            raise ValueError(f"'{v}' must not carry a query or fragment")
        return v.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            # A CR or LF here would let a config value inject extra upstream headers.
            if any(c in k for c in "\r\n: ") or "\r" in val or "\n" in val:
                raise ValueError(f"header {k!r} has a forbidden character (CR, LF, colon or space)")
        return v

    @model_validator(mode="after")
    def _default_name(self) -> BackendSpec:
        if not self.name:
            p = urlsplit(self.url)
            self.name = f"{p.hostname}:{p.port or (443 if p.scheme == 'https' else 80)}{p.path}"
        return self


class ApiKeySpec(_Strict):
    """A client key. Give `key` (hashed at load, never kept) or `sha256` as 'SALT:HEXDIGEST'."""

    name: str = ""
    key: str | None = None
    sha256: str | None = Field(None, description="salt:hex(sha256(salt + key)), so the file holds no secret")
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    max_concurrency: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_form(self) -> ApiKeySpec:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'key' or 'sha256'")
        if self.sha256 is not None and ":" not in self.sha256:
            raise ValueError("'sha256' must be 'SALT:HEXDIGEST'")
        return self


class TimeoutsConfig(_Strict):
    connect_s: float = Field(3.0, gt=0)
    first_byte_s: float = Field(120.0, gt=0, description="Until the upstream's response headers arrive.")
    chunk_gap_s: float = Field(60.0, gt=0, description="Longest silence between two upstream body chunks.")
    client_header_s: float = Field(
        10.0, gt=0, description="A client must send its headers within this (slowloris)."
    )
    client_idle_s: float = Field(
        75.0, gt=0, description="Idle keep-alive client connections are closed after this."
    )


class HealthConfig(_Strict):
    probe_interval_s: float = Field(5.0, gt=0)
    probe_timeout_s: float = Field(2.0, gt=0)
    eject_after_failures: int = Field(
        3, ge=1, description="Consecutive request failures before passive ejection."
    )
    eject_base_s: float = Field(2.0, gt=0)
    eject_max_s: float = Field(60.0, gt=0)


class RetryConfig(_Strict):
    max_attempts: int = Field(3, ge=1, description="Tries per request, the first included.")
    budget_ratio: float = Field(0.2, ge=0, description="Retries may add at most this fraction of requests.")
    budget_min_per_s: float = Field(
        5.0, ge=0, description="Retries always allowed at this rate when traffic is low."
    )


class LimitsConfig(_Strict):
    max_in_flight: int = Field(
        10_000, ge=1, description="Global cap; above it clients get 429 with Retry-After."
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    queue_timeout_s: float = Field(
        0.0, ge=0, description="How long a request waits for a usable backend (scale from zero) before 503."
    )
    max_queue: int = Field(1000, ge=0)


class RouterConfig(_Strict):
    listen: str = "127.0.0.1:8780"
    policy: str = "least-outstanding"
    backends: list[BackendSpec] = []
    api_keys: list[ApiKeySpec] = []
    admin_token: str | None = None
    table_url: str | None = Field(
        None, description="Where a router started with no backends fetches its table."
    )
    wake_url: str | None = Field(
        None, description="POSTed a JSON wake-up event when requests wait for a backend."
    )
    access_log: bool = False
    request_usage: bool = Field(
        True,
        description="Ask streaming upstreams for usage (stream_options.include_usage) so tokens are "
        "counted; the extra usage chunk is stripped for clients that did not ask for it.",
    )
    metrics_auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Require a bearer token (metrics_token or admin_token) for /metrics; 'auto' is on "
        "unless the router listens on a loopback address only.",
    )
    metrics_token: str | None = Field(None, description="A token that may read /metrics (and nothing else).")
    affinity_prefix_chars: int = Field(256, ge=1)
    affinity_load_factor: float = Field(1.25, ge=1.0)
    timeouts: TimeoutsConfig = TimeoutsConfig()
    health: HealthConfig = HealthConfig()
    retries: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"'{v}' is not HOST:PORT like 127.0.0.1:8780")
        return v

    @field_validator("metrics_auth", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `on`/`off` as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _metrics_auth_possible(self) -> RouterConfig:
        if self.metrics_auth == "on" and not (self.metrics_token or self.admin_token):
            raise ValueError("metrics_auth is 'on' but neither metrics_token nor admin_token is set")
        return self

    @property
    def metrics_protected(self) -> bool:
        if self.metrics_auth == "auto":
            return not _is_loopback(self.host)
        return self.metrics_auth == "on"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or 0.0.0.0 / ::, which are not loopback): treat as reachable from outside


def hash_key(key: str, salt: str | None = None) -> str:
    """'salt:hexdigest' for a client API key. Keys are random tokens, so salted sha256 suffices."""
    salt = salt if salt is not None else secrets.token_hex(8)
    return f"{salt}:{hashlib.sha256((salt + key).encode()).hexdigest()}"


def _model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `path` (list indexes step into the item model)."""
    model: type[BaseModel] = root
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def _line_of_any(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """Like core's `_line_of`, but also steps through sequences (backends[0].url)."""
    line = None
    for i, part in enumerate(path):
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
            continue
        sub = _line_of(node, (part,))
        if sub is None:
            return line
        line = sub
        for key_node, value_node in node.value:  # type: ignore[union-attr]
            if key_node.value == part:
                node = value_node
                break
        del i
    return line


def explain(err: ValidationError, source: str, tree: yaml.Node | None) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = source
        line = _line_of_any(tree, loc)
        if line:
            where += f", line {line}"
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _model_at(RouterConfig, loc[:-1])
            valid = list(parent.model_fields) if parent else []
            near = did_you_mean(str(loc[-1]), valid)
            hint = f"; did you mean '{near}'?" if near else ""
            lines.append(f"{where}: unknown key '{dotted}'{hint} (valid here: {', '.join(valid)})")
        else:
            lines.append(f"{where}: '{dotted}': {e['msg']}")
    return ConfigError(
        "invalid router configuration:\n  " + "\n  ".join(lines), fix=f"edit {source}; see docs/router.md"
    )


def parse_router_config(
    text: str, source: str = "router.yaml", overrides: dict[str, Any] | None = None
) -> RouterConfig:
    """Parse router YAML text; `overrides` (from CLI flags) replace top-level keys."""
    try:
        tree = yaml.compose(text) if text.strip() else None
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}", fix=f"fix the syntax in {source}") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys", fix="see docs/router.md")
    for k, v in (overrides or {}).items():
        # Flags for one nested key (limits.queue_timeout_s) must not wipe the file's other keys there.
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, source, tree) from exc


def load_router_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RouterConfig:
    if path is None:
        return parse_router_config("", "command line", overrides)
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"router config {p} does not exist", fix="check the --config path")
    return parse_router_config(p.read_text(), str(p), overrides)


def parse_backend_table(payload: Any) -> list[BackendSpec]:
    """Validate an admin `PUT /router/backends` body; errors name the bad key like config errors do."""
    if not isinstance(payload, dict) or "backends" not in payload:
        raise ConfigError('the body must be a JSON object {"backends": [...]}', fix='send {"backends": []}')
    extra = set(payload) - {"backends"}
    if extra:
        raise ConfigError(
            f"unknown key '{sorted(extra)[0]}' in the backend table", fix="send only 'backends'"
        )
    try:
        specs = [BackendSpec.model_validate(b) for b in payload["backends"]]
    except ValidationError as exc:
        raise ConfigError(
            "invalid backend table: "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
            fix="valid keys: " + ", ".join(BackendSpec.model_fields),
        ) from exc
    except TypeError as exc:
        raise ConfigError("'backends' must be a list of objects", fix="see docs/router.md") from exc
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(
            f"backend names must be unique; repeated: {', '.join(sorted(dup))}", fix="rename them"
        )
    return specs
