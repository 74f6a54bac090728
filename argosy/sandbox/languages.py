"""The language table (languages.yaml): toolchains, compile/run steps, per-language limits, global caps."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from argosy.core.errors import ConfigError, unknown_name
from argosy.sandbox.errors import SandboxError, SandboxRequestError
from argosy.sandbox.limits import Limits  # re-exported: most callers import it from here

# What the sandbox sees as PATH; toolchains are looked up on it, not on the server's PATH.
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsSpec(_Strict):
    timeout_ms: int | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)
    cpu_count: float | None = Field(None, gt=0)
    max_output_bytes: int | None = Field(None, gt=0)
    pids: int | None = Field(None, gt=0)
    file_size_mb: int | None = Field(None, gt=0)
    tmpfs_mb: int | None = Field(None, gt=0)


class LanguageSpec(_Strict):
    aliases: list[str] = []
    file: str
    toolchain: str
    version: list[str]
    run: list[str]
    compile: list[str] | None = None
    env: dict[str, str] = {}
    limits: LimitsSpec = LimitsSpec()
    compile_limits: LimitsSpec = LimitsSpec()
    address_space_extra_mb: int = Field(256, ge=0)


class TableSpec(_Strict):
    caps: LimitsSpec
    defaults: LimitsSpec
    compile_defaults: LimitsSpec
    languages: dict[str, LanguageSpec]


@dataclass
class Language:
    name: str
    spec: LanguageSpec
    _version: str | None = field(default=None, repr=False)

    @property
    def compiled(self) -> bool:
        return self.spec.compile is not None

    def toolchain_path(self) -> str | None:
        return shutil.which(self.spec.toolchain, path=SANDBOX_PATH)

    def version(self) -> str:
        """The toolchain's version line, asked once per Language object (toolchains do not change under us)."""
        if self._version is None:
            if self.toolchain_path() is None:
                raise SandboxError(
                    f"the {self.name} toolchain ('{self.spec.toolchain}') is not installed where sandboxes see it "
                    f"({SANDBOX_PATH})",
                    fix="install it on this node (see .ci/apt-sandbox.txt) or run `argosy sandbox doctor`",
                )
            try:
                proc = subprocess.run(
                    self.spec.version,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"},
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxError(
                    f"could not ask {self.name} for its version: {exc}", fix="run `argosy sandbox doctor`"
                ) from exc
            # `java -version` answers on stderr.
            text = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
            self._version = text[0].strip() if text else "unknown"
        return self._version

    def argv(self, step: list[str], file: str) -> list[str]:
        return [part.replace("{file}", file) for part in step]


def _merge(*layers: LimitsSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out.update({k: v for k, v in layer.model_dump().items() if v is not None})
    return out


class LanguageTable:
    """The parsed table. Build one per service (it caches toolchain versions)."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.languages = {name: Language(name, lang) for name, lang in spec.languages.items()}
        self._aliases = {
            alias: name for name, lang in spec.languages.items() for alias in [name, *lang.aliases]
        }

    @classmethod
    def load(cls, text: str | None = None, source: str = "argosy/sandbox/languages.yaml") -> LanguageTable:
        if text is None:
            text = resources.files("argosy.sandbox").joinpath("languages.yaml").read_text()
        try:
            return cls(TableSpec.model_validate(yaml.safe_load(text)))
        except ValidationError as exc:
            raise ConfigError(f"{source} is invalid: {exc}", fix=f"fix {source}") from exc

    def names(self) -> list[str]:
        return sorted(self.languages)

    def get(self, name: str) -> Language:
        key = self._aliases.get(name.lower())
        if key is None:
            raise unknown_name("language", name, self._aliases, fix="pick one of the languages listed")
        return self.languages[key]

    def limits(self, lang: Language, request: dict[str, Any], compile_step: bool = False) -> Limits:
        """Defaults, then the language's own, then the request; every figure checked against the caps."""
        caps = _merge(self.spec.caps)
        if compile_step:
            merged = _merge(self.spec.defaults, self.spec.compile_defaults, lang.spec.compile_limits)
        else:
            merged = _merge(self.spec.defaults, lang.spec.limits)
            for key, value in request.items():
                if value is None:
                    continue
                cap = caps.get(key)
                if cap is not None and value > cap:
                    raise SandboxRequestError(
                        f"{key}={value} is above this node's cap of {cap}",
                        fix=f"ask for {key} <= {cap} (caps are in argosy/sandbox/languages.yaml)",
                    )
                merged[key] = value
        for key, cap in caps.items():
            if key in merged and merged[key] > cap:
                merged[key] = cap  # a language default above the cap is the table's mistake, not the user's
        merged.setdefault("tmpfs_mb", caps.get("tmpfs_mb", 64))
        limits = Limits(**merged)
        return replace(limits, address_space_extra_mb=lang.spec.address_space_extra_mb)
