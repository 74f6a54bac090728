"""Request and result shapes of the sandbox API (the CLI's `-o json` prints ExecResult as is)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_relative_path(path: str) -> str:
    """A path inside the work dir: relative, no `..`, no empty parts."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or any(part in ("..", "") for part in p.parts) or "\x00" in path:
        raise ValueError(f"file path '{path}' must be relative to the work dir, without '..'")
    return str(p)


class ExecRequest(_Strict):
    code: str | None = None
    files: dict[str, str] | None = Field(
        None, description="path -> text; the language's source file is the entry point"
    )
    language: str = "python"
    version: str | None = Field(
        None, description="Refused unless it matches the installed toolchain's version"
    )
    stdin: str | None = None
    args: list[str] = []
    timeout_ms: int | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)
    cpu_count: float | None = Field(None, gt=0)
    network: bool = False
    max_output_bytes: int | None = Field(None, gt=0)

    @field_validator("files")
    @classmethod
    def _paths(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        if files is None:
            return None
        return {check_relative_path(k): v for k, v in files.items()}

    @model_validator(mode="after")
    def _code_or_files(self) -> ExecRequest:
        if self.code is None and not self.files:
            raise ValueError("give `code` or `files`")
        return self


class CompileOutput(_Strict):
    stdout: str
    stderr: str
    exit_code: int | None
    duration_ms: float
    timed_out: bool = False
    oom_killed: bool = False


Status = Literal["ok", "error", "compile_error", "timed_out", "oom_killed", "output_limit"]


class ExecResult(_Strict):
    run_id: str
    status: Status
    stdout: str
    stderr: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    oom_killed: bool
    truncated: bool
    duration_ms: float
    language: str
    version: str
    backend: str
    compile: CompileOutput | None = None
    warm: bool = Field(False, description="Served from a pre-warmed sandbox")
    node: str | None = Field(
        None, description="Id of the node whose agent ran it; null: the server's (or CLI's) own machine"
    )
    limits: dict[str, float] | None = Field(None, description="The limits the run had, after caps")


class SessionCreate(_Strict):
    ttl_s: float = Field(600.0, gt=0)
    network: bool = False
    memory_mb: int | None = Field(None, gt=0)


class SessionExec(_Strict):
    """Run `code` in `language`, or `command` (an argv) in the session's work dir."""

    code: str | None = None
    language: str = "python"
    command: list[str] | None = None
    stdin: str | None = None
    args: list[str] = []
    timeout_ms: int | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)
    cpu_count: float | None = Field(None, gt=0)
    max_output_bytes: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> SessionExec:
        if (self.code is None) == (not self.command):
            raise ValueError("give exactly one of `code` or `command`")
        return self


class SessionInfo(_Strict):
    id: str
    created_at: float
    expires_at: float
    network: bool
    memory_mb: int | None
    files: int
    bytes: int
