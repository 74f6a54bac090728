"""Settings: `ARGOSY_HOME`, `ARGOSY_*` environment variables and an optional strict `argosy.yaml`.

Precedence (highest first): environment, then `argosy.yaml`, then defaults. The YAML schema is strict:
an unknown key is an error naming the key, the file and line, and the nearest valid key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from argosy.core.errors import ConfigError, did_you_mean

DEFAULT_PORT = 8750


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    url: str | None = Field(None, description="Use a remote server instead of the embedded local one.")
    public_url: str | None = Field(
        None,
        description="The URL cloud nodes reach this server at (their agents register there); "
        "needed for cloud providers when the server listens on loopback.",
    )
    reconcile_interval_s: float = Field(1.0, gt=0)
    heartbeat_timeout_s: float = Field(15.0, gt=0)


class LocalProviderConfig(_Strict):
    price_per_hour: float = Field(0.0, ge=0, description="What an hour of this machine costs you, in USD.")
    gpu_price_per_hour: float = Field(0.0, ge=0)
    country: str | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="ISO 3166-1 alpha-2 country of this machine: its grid's carbon intensity for fine-tunes.",
    )


class FakeProviderConfig(_Strict):
    provision_delay_s: float = Field(5.0, ge=0)
    capacity: int = Field(100, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    preemption_rate_per_hour: float = Field(0.0, ge=0)
    price_per_hour: float = Field(1.0, ge=0)
    seed: int = 0
    # Serverless endpoints of the fake provider answer here (tests point it at a real local server).
    endpoint_url: str | None = None
    endpoint_price_per_second: float = Field(0.0005, ge=0)


class ProvidersConfig(_Strict):
    local: LocalProviderConfig = LocalProviderConfig()
    fake: FakeProviderConfig = FakeProviderConfig()


class LlamaCppConfig(_Strict):
    binary: str | None = Field(None, description="Use this llama-server binary instead of building one.")
    source_version: str = "0.3.36"
    parallel: int = Field(4, ge=1)
    context: int = Field(8192, ge=256)
    threads: int | None = Field(None, ge=1)


class VllmConfig(_Strict):
    dtype: str = "auto"
    extra_args: list[str] = []


class EngineConfig(_Strict):
    default: str = "llamacpp"
    start_timeout_s: float = Field(120.0, gt=0)
    llamacpp: LlamaCppConfig = LlamaCppConfig()
    vllm: VllmConfig = VllmConfig()


class Settings(_Strict):
    home: Path = Path("~/.argosy")
    database_url: str | None = None
    cache: Path | None = Field(
        None, description="Where built engines and converted models are cached (default HOME/cache)."
    )
    log_level: str = "INFO"
    server: ServerConfig = ServerConfig()
    providers: ProvidersConfig = ProvidersConfig()
    engine: EngineConfig = EngineConfig()

    # Derived paths. Everything Argosy writes lives under `home`.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'argosy.db'}"

    @property
    def credentials_path(self) -> Path:
        return self.home / "credentials"

    @property
    def cache_dir(self) -> Path:
        return self.cache.expanduser() if self.cache else self.home / "cache"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


# Environment variables and the settings field each one sets (dotted path).
ENV_VARS: dict[str, str] = {
    "ARGOSY_HOME": "home",
    "ARGOSY_DATABASE_URL": "database_url",
    "ARGOSY_CACHE_DIR": "cache",
    "ARGOSY_LOG_LEVEL": "log_level",
    "ARGOSY_SERVER_URL": "server.url",
    "ARGOSY_SERVER_HOST": "server.host",
    "ARGOSY_SERVER_PORT": "server.port",
    "ARGOSY_SERVER_PUBLIC_URL": "server.public_url",
    "ARGOSY_LLAMA_SERVER": "engine.llamacpp.binary",
    "ARGOSY_ENGINE": "engine.default",
}


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the key at `path` in a composed YAML tree."""
    line = None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            return line
        for key_node, value_node in node.value:
            if key_node.value == part:
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            return line
    return line


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in path:
        field = model.model_fields.get(str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def _explain(err: ValidationError, source: str, tree: yaml.Node | None) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = source
        line = _line_of(tree, loc)
        if line:
            where += f", line {line}"
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            valid = list(parent.model_fields) if parent else []
            near = did_you_mean(str(loc[-1]), valid)
            hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), near])}'?" if near else ""
            lines.append(f"{where}: unknown key '{dotted}'{hint} (valid here: {', '.join(valid)})")
        else:
            lines.append(f"{where}: '{dotted}': {e['msg']}")
    return ConfigError("invalid configuration:\n  " + "\n  ".join(lines), fix=f"edit {source}")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
    data[parts[-1]] = value


def config_path(env: dict[str, str]) -> Path | None:
    if env.get("ARGOSY_CONFIG"):
        p = Path(env["ARGOSY_CONFIG"]).expanduser()
        if not p.exists():
            raise ConfigError(
                f"ARGOSY_CONFIG points at {p}, which does not exist",
                fix="unset ARGOSY_CONFIG or create the file",
            )
        return p
    home = Path(env.get("ARGOSY_HOME", "~/.argosy")).expanduser()
    for p in (Path("argosy.yaml"), home / "argosy.yaml"):
        if p.exists():
            return p
    return None


def parse_config(text: str, source: str = "argosy.yaml", env: dict[str, str] | None = None) -> Settings:
    """Parse YAML text plus environment overrides into Settings, with errors that point at lines."""
    try:
        tree = yaml.compose(text) if text.strip() else None
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}", fix=f"fix the syntax in {source}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys", fix="see docs/configuration.md"
        )
    for var, dotted in ENV_VARS.items():
        if env and env.get(var):
            _set_dotted(data, dotted, env[var])
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source, tree) from exc
    settings.home = settings.home.expanduser().resolve()
    return settings


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    text = path.read_text() if path else ""
    return parse_config(text, str(path) if path else "argosy.yaml", env)


def ensure_home(settings: Settings) -> None:
    for d in (settings.home, settings.cache_dir, settings.logs_dir, settings.run_dir, settings.models_dir):
        d.mkdir(parents=True, exist_ok=True)
    settings.home.chmod(0o700)
