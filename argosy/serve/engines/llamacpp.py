"""llama.cpp's `llama-server`: the default engine on CPU nodes.

Serves a GGUF file with the OpenAI-compatible API, `/health` (503 while loading, 200 when ready)
and Prometheus `/metrics`. An HF-format model dir is converted to GGUF on the node by `prepare`.
"""

from __future__ import annotations

from argosy.core.config import Settings
from argosy.core.errors import ArgosyError
from argosy.serve.engines.base import (
    EngineCommand,
    Prepared,
    Progress,
    ReadinessCheck,
    ServingSpec,
    check_common,
    no_progress,
    require_model_path,
)

# On a GPU node llama-server offloads every layer (a CUDA build of it is the node image's job).
ALL_LAYERS = "999"


class LlamaCppEngine:
    name = "llamacpp"
    summary = "llama.cpp llama-server on a GGUF conversion of the model (default on CPU)"

    def validate(self, spec: ServingSpec) -> None:
        check_common(spec)
        if spec.lora and spec.lora.name and spec.lora.name != spec.served_name:
            # llama-server applies --lora to every request under one alias; it cannot serve the
            # adapter under a second name next to the base model.
            raise ArgosyError(
                f"llama.cpp serves a LoRA adapter under the model's own name ('{spec.served_name}'), "
                f"not as '{spec.lora.name}'",
                fix="leave the adapter name unset, or use the vllm engine to serve base and adapter side by side",
            )

    def command(self, spec: ServingSpec, prepared: Prepared | None = None) -> EngineCommand:
        self.validate(spec)
        from argosy.serve.llamacpp_build import CONVENTIONAL_BINARY

        notes: list[str] = []
        executable = prepared.executable if prepared else CONVENTIONAL_BINARY
        model = prepared.model if prepared else spec.model
        if prepared is None and not spec.model.endswith(".gguf"):
            notes.append("the node converts this HF model to GGUF (cached) before starting llama-server")
        argv = [
            executable,
            "--model", model,
            "--alias", spec.served_name,
            "--host", spec.host,
            "--port", str(spec.port),
            "--ctx-size", str(spec.context),  # split evenly across the --parallel slots
            "--parallel", str(spec.parallel),
            "--metrics",
            "--jinja",  # use the model's own chat template
            "--no-webui",
        ]  # fmt: skip
        if spec.threads:
            argv += ["--threads", str(spec.threads)]
        if spec.device == "gpu":
            argv += ["--n-gpu-layers", ALL_LAYERS]
        if spec.lora:
            argv += ["--lora", prepared.lora if prepared and prepared.lora else spec.lora.path]
        argv += list(spec.extra_args)
        env = dict(spec.env)
        if prepared:
            env.update(dict(prepared.env))
        return EngineCommand(
            engine=self.name,
            argv=tuple(argv),
            env=env,
            base_url=spec.base_url,
            ready=ReadinessCheck(
                served_name=spec.served_name, timeout_s=120.0 if spec.device == "gpu" else 60.0
            ),
            served_name=spec.served_name,
            notes=tuple(notes),
        )

    def prepare(self, spec: ServingSpec, settings: Settings, progress: Progress = no_progress) -> Prepared:
        """Node-side: build/find llama-server, convert the model (and adapter) to GGUF; all cached."""
        self.validate(spec)
        from argosy.serve.gguf import ensure_gguf, ensure_lora_gguf
        from argosy.serve.llamacpp_build import ensure_llama_server

        model = require_model_path(spec.model)
        binary = ensure_llama_server(settings, progress)
        gguf = (
            model
            if model.is_file() and model.suffix == ".gguf"
            else ensure_gguf(model, settings, progress=progress)
        )
        lora: str | None = None
        if spec.lora:
            adapter = require_model_path(spec.lora.path)
            if adapter.is_file() and adapter.suffix == ".gguf":
                lora = str(adapter)
            elif model.is_dir():
                lora = str(ensure_lora_gguf(adapter, model, settings, progress=progress))
            else:
                raise ArgosyError(
                    f"the LoRA adapter {adapter} is not GGUF, and converting it needs the HF base model dir",
                    fix="serve the HF model dir instead of a .gguf file, or pass an adapter already in GGUF",
                )
        return Prepared(
            executable=str(binary),
            model=str(gguf),
            lora=lora,
            info=(("binary", str(binary)), ("source_version", settings.engine.llamacpp.source_version)),
        )

    def cleanup(self, prepared: Prepared) -> None:
        """Nothing per-run to remove: the binary and GGUF files are shared caches."""
