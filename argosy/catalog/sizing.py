"""Model sizing: parameters, weight bytes by dtype/quantization, KV cache per token, and the VRAM
(and GPU count / tensor-parallel size) a model needs for a context length and concurrency.

All sizes are in GB = 10^9 bytes, the unit GPU datasheets use for VRAM.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from argosy.core.errors import ConfigError, NotFoundError, did_you_mean

GB = 1e9
# Bytes per weight. 4-bit AWQ/GPTQ/MXFP4 carry a 16-bit scale (and zero) per group of 128 (AWQ/GPTQ)
# or an 8-bit scale per 32 (MXFP4): about 4.25 bits per weight either way.
WEIGHT_BYTES: MappingProxyType[str, float] = MappingProxyType(
    {
        "fp32": 4.0,
        "bf16": 2.0,
        "fp16": 2.0,
        "fp8": 1.0,
        "int8": 1.0,
        "awq": 4.25 / 8,
        "gptq": 4.25 / 8,
        "mxfp4": 4.25 / 8,
    }
)
QUANTIZATIONS = tuple(WEIGHT_BYTES)
KV_BYTES: MappingProxyType[str, float] = MappingProxyType({"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0})
# Per GPU, beyond weights and KV cache: the CUDA context, cuBLAS/NCCL workspaces and activation peaks.
# vLLM measures ~1 GB of fixed cost plus activations that grow with the model; 1 GB + 2% of the shard's
# weights matches its profiler on 8B-70B models within a few hundred MB.
FIXED_OVERHEAD_GB = 1.0
ACTIVATION_FRACTION = 0.02
# vLLM's default --gpu-memory-utilization: the share of VRAM it lets itself use.
VRAM_HEADROOM = 0.90
# Datasheet memory sizes are binary: an "80 GB" A100 has 80 GiB (81920 MiB), a "24 GB" 4090 24 GiB.
GIB = 2**30 / 1e9


def usable_vram_gb(vram_gb: float) -> float:
    """GB (10^9 bytes) a serving engine may use on a GPU sold as `vram_gb`."""
    return vram_gb * GIB * VRAM_HEADROOM


TP_SIZES = (1, 2, 4, 8)
DEFAULT_MAX_MODEL_LEN = 8192
# Decode efficiency: the share of peak memory bandwidth and tensor FLOPs a serving engine reaches.
BANDWIDTH_EFFICIENCY = 0.6
COMPUTE_EFFICIENCY = 0.4


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: float  # total parameters
    active_params: float  # parameters used per token (== params unless MoE)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    kv_kind: str = "gqa"  # "gqa" or "mla"
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    max_position: int | None = None
    native_dtype: str = "bf16"
    hf_id: str = ""
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.active_params < self.params

    def kv_elements_per_token(self) -> int:
        """KV cache elements per token across all layers: layers x kv_heads x head_dim x 2 (K and V),
        or for DeepSeek's MLA the compressed latent plus the RoPE key, shared by all heads."""
        if self.kv_kind == "mla":
            return self.layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        return self.layers * self.kv_heads * self.head_dim * 2


# -- built-in table ------------------------------------------------------------------------------


@cache
def builtin_models() -> MappingProxyType[str, ModelSpec]:
    text = resources.files("argosy.catalog").joinpath("data/models.yaml").read_text()
    data = yaml.safe_load(text)
    out: dict[str, ModelSpec] = {}
    for name, row in data["models"].items():
        params = float(row["params_b"]) * 1e9
        heads = int(row["heads"])
        out[name] = ModelSpec(
            name=name,
            params=params,
            active_params=float(row.get("active_params_b", row["params_b"])) * 1e9,
            layers=int(row["layers"]),
            hidden=int(row["hidden"]),
            heads=heads,
            kv_heads=int(row.get("kv_heads", heads)),
            head_dim=int(row.get("head_dim", int(row["hidden"]) // heads)),
            kv_kind=row.get("kv", "gqa"),
            kv_lora_rank=int(row.get("kv_lora_rank", 0)),
            qk_rope_head_dim=int(row.get("qk_rope_head_dim", 0)),
            max_position=row.get("max_position"),
            native_dtype=row.get("native_dtype", "bf16"),
            hf_id=row.get("hf_id", ""),
            source=row.get("source", ""),
        )
    return MappingProxyType(out)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").removesuffix("-instruct").removesuffix("-it")


def find_builtin(name: str) -> ModelSpec | None:
    models = builtin_models()
    key = _norm(name.split("/")[-1])
    if key in models:
        return models[key]
    for spec in models.values():  # a Hugging Face id works too
        if spec.hf_id.lower() == name.lower() or _norm(spec.hf_id.split("/")[-1]) == key:
            return spec
    return None


# -- config.json ---------------------------------------------------------------------------------


def _need(cfg: dict[str, Any], key: str, path: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(
            f"{path} has no '{key}', which sizing needs",
            fix=f"add '{key}' to {path} (copy it from the model's config.json on Hugging Face)",
        )
    return cfg[key]


def model_from_config(cfg: dict[str, Any], name: str, path: str = "config.json") -> ModelSpec:
    """Parameters and KV shape from a Hugging Face config.json (Llama/Qwen/Mistral/Mixtral/Gemma/DeepSeek)."""
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {
            **cfg["text_config"],
            "torch_dtype": cfg.get("torch_dtype"),
            "quantization_config": cfg.get("quantization_config"),
        }
    hidden = int(_need(cfg, "hidden_size", path))
    layers = int(_need(cfg, "num_hidden_layers", path))
    heads = int(_need(cfg, "num_attention_heads", path))
    vocab = int(_need(cfg, "vocab_size", path))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0)
    per_tok = int(cfg.get("num_experts_per_tok") or 0)
    mla = cfg.get("kv_lora_rank") is not None
    if mla:
        q_rank = int(cfg.get("q_lora_rank") or 0)
        nope, rope = int(cfg.get("qk_nope_head_dim", 128)), int(cfg.get("qk_rope_head_dim", 64))
        v_dim, kv_rank = int(cfg.get("v_head_dim", 128)), int(cfg["kv_lora_rank"])
        q = hidden * q_rank + q_rank * heads * (nope + rope) if q_rank else hidden * heads * (nope + rope)
        attn = q + hidden * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) + heads * v_dim * hidden
    else:
        rope = kv_rank = 0
        attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    if experts:
        moe_inter = int(cfg.get("moe_intermediate_size") or _need(cfg, "intermediate_size", path))
        shared = int(cfg.get("n_shared_experts") or 0) * 3 * hidden * moe_inter
        shared += 3 * hidden * int(cfg.get("shared_expert_intermediate_size") or 0)
        dense_layers = int(cfg.get("first_k_dense_replace") or 0)
        dense_mlp = 3 * hidden * int(cfg.get("intermediate_size") or 0) if dense_layers else 0
        moe_layers = layers - dense_layers
        mlp_total = (
            moe_layers * (experts * 3 * hidden * moe_inter + shared + hidden * experts)
            + dense_layers * dense_mlp
        )
        mlp_active = moe_layers * ((per_tok or experts) * 3 * hidden * moe_inter + shared + hidden * experts)
        mlp_active += dense_layers * dense_mlp
    else:
        inter = int(_need(cfg, "intermediate_size", path))
        mlp_total = mlp_active = layers * 3 * hidden * inter
    embed = vocab * hidden
    head = 0 if cfg.get("tie_word_embeddings") else vocab * hidden
    total = embed + head + layers * attn + mlp_total
    active = head + layers * attn + mlp_active + (embed if head == 0 else 0)
    qcfg = cfg.get("quantization_config") or {}
    native = str(qcfg.get("quant_method") or cfg.get("torch_dtype") or "bf16").lower()
    native = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "compressed-tensors": "fp8"}.get(
        native, native
    )
    if native not in WEIGHT_BYTES:
        native = "bf16"
    return ModelSpec(
        name=name,
        params=float(total),
        active_params=float(active),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        kv_kind="mla" if mla else "gqa",
        kv_lora_rank=kv_rank,
        qk_rope_head_dim=rope,
        max_position=cfg.get("max_position_embeddings"),
        native_dtype=native,
        source=path,
    )


def load_model(name_or_path: str) -> ModelSpec:
    """A built-in model by name (or Hugging Face id), or a config.json path / a directory holding one."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise NotFoundError(
                f"no config.json at {path}", fix="pass a built-in model name or a path to config.json"
            )
        try:
            cfg = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}", fix=f"fix or re-download {path}") from exc
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path} is not a JSON object", fix="config.json must be a mapping of fields")
        return model_from_config(cfg, path.parent.name or str(path), str(path))
    spec = find_builtin(name_or_path)
    if spec is None:
        names = sorted(builtin_models())
        near = did_you_mean(_norm(name_or_path), names)
        hint = f" Did you mean '{near}'?" if near else ""
        raise NotFoundError(
            f"unknown model '{name_or_path}'.{hint}",
            fix=f"use a built-in name ({', '.join(names[:8])}, ...; `argosy plan --list-models`) or a path to config.json",
        )
    return spec


# -- the requirement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """What a model needs in memory, and how to split it over GPUs."""

    model: ModelSpec
    quantization: str
    kv_dtype: str
    max_model_len: int
    concurrency: int
    weights_gb: float
    kv_bytes_per_token: float
    kv_gb: float  # for max_model_len x concurrency tokens

    @property
    def total_gb(self) -> float:
        """Weights + KV + the overhead of one GPU: the VRAM needed on a single GPU."""
        return self.per_gpu_gb(1)

    def per_gpu_gb(self, tp: int) -> float:
        """VRAM each GPU needs at tensor-parallel size `tp`. Weights shard evenly; KV heads shard only as
        far as there are heads (fewer KV heads than GPUs means replicas); MLA's latent cache does not shard."""
        kv_split = 1 if self.model.kv_kind == "mla" else max(1, min(tp, self.model.kv_heads))
        weights = self.weights_gb / tp
        return weights + self.kv_gb / kv_split + FIXED_OVERHEAD_GB + ACTIVATION_FRACTION * weights

    def valid_tp(self, tp: int) -> bool:
        return self.model.heads % tp == 0

    def tp_for(self, vram_gb: float, gpu_count: int) -> int | None:
        """The smallest tensor-parallel size <= gpu_count that fits on GPUs of `vram_gb`, or None."""
        usable = usable_vram_gb(vram_gb)
        for tp in TP_SIZES:
            if tp > gpu_count:
                break
            if self.valid_tp(tp) and self.per_gpu_gb(tp) <= usable:
                return tp
        return None

    def min_gpus(self, vram_gb: float) -> int | None:
        return self.tp_for(vram_gb, max(TP_SIZES))

    def fits_ram(self, ram_gb: float, usable_fraction: float) -> bool:
        """For CPU inference: weights + KV in system RAM (no per-GPU overhead)."""
        return self.weights_gb + self.kv_gb + FIXED_OVERHEAD_GB <= ram_gb * usable_fraction

    def decode_tokens_per_s(self, bandwidth_gbps: float, tflops: float) -> float:
        """Aggregate decode throughput at `concurrency`, from memory bandwidth (each step reads the active
        weights once plus each sequence's KV) capped by compute (2 FLOPs per active parameter per token)."""
        active_gb = self.weights_gb * (self.model.active_params / self.model.params)
        avg_kv_gb = (
            self.kv_bytes_per_token * self.max_model_len / 2 / GB
        )  # sequences are half full on average
        step_gb = active_gb + self.concurrency * avg_kv_gb
        memory_bound = self.concurrency * bandwidth_gbps * BANDWIDTH_EFFICIENCY / step_gb
        if tflops <= 0:
            return memory_bound
        compute_bound = tflops * 1e12 * COMPUTE_EFFICIENCY / (2 * self.model.active_params)
        return min(memory_bound, compute_bound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "params_b": round(self.model.params / 1e9, 3),
            "active_params_b": round(self.model.active_params / 1e9, 3),
            "quantization": self.quantization,
            "kv_dtype": self.kv_dtype,
            "max_model_len": self.max_model_len,
            "concurrency": self.concurrency,
            "weights_gb": round(self.weights_gb, 2),
            "kv_bytes_per_token": int(self.kv_bytes_per_token),
            "kv_gb": round(self.kv_gb, 2),
            "single_gpu_vram_gb": round(self.total_gb, 2),
            "source": self.model.source,
        }


def size_model(
    model: ModelSpec | str,
    quantization: str | None = None,
    max_model_len: int | None = None,
    concurrency: int = 1,
    kv_dtype: str | None = None,
) -> Requirement:
    """The memory `model` needs. Quantization defaults to the checkpoint's own dtype; KV cache to bf16
    (fp16 for fp16 checkpoints)."""
    spec = load_model(model) if isinstance(model, str) else model
    quant = (quantization or spec.native_dtype).lower()
    if quant not in WEIGHT_BYTES:
        near = did_you_mean(quant, QUANTIZATIONS)
        raise ConfigError(
            f"unknown quantization '{quant}'" + (f"; did you mean '{near}'?" if near else ""),
            fix=f"use one of {', '.join(QUANTIZATIONS)}",
        )
    kv = (kv_dtype or ("fp16" if spec.native_dtype == "fp16" else "bf16")).lower()
    if kv not in KV_BYTES:
        raise ConfigError(f"unknown KV cache dtype '{kv}'", fix=f"use one of {', '.join(KV_BYTES)}")
    length = int(max_model_len or min(DEFAULT_MAX_MODEL_LEN, spec.max_position or DEFAULT_MAX_MODEL_LEN))
    if length < 1 or concurrency < 1:
        raise ConfigError("max_model_len and concurrency must be at least 1", fix="pass positive numbers")
    if spec.max_position and length > spec.max_position:
        raise ConfigError(
            f"{spec.name} supports at most {spec.max_position} tokens of context, not {length}",
            fix=f"use --max-model-len {spec.max_position} or less",
        )
    kv_per_token = spec.kv_elements_per_token() * KV_BYTES[kv]
    return Requirement(
        model=spec,
        quantization=quant,
        kv_dtype=kv,
        max_model_len=length,
        concurrency=concurrency,
        weights_gb=spec.params * WEIGHT_BYTES[quant] / GB,
        kv_bytes_per_token=kv_per_token,
        kv_gb=kv_per_token * length * concurrency / GB,
    )


def with_context(req: Requirement, max_model_len: int) -> Requirement:
    """The same requirement at another context length."""
    return replace(
        req, max_model_len=max_model_len, kv_gb=req.kv_bytes_per_token * max_model_len * req.concurrency / GB
    )


def ceil_pow2(n: int) -> int:
    return 1 if n <= 1 else 2 ** math.ceil(math.log2(n))
