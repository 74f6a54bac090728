"""Memory a fine-tune needs on one device, so placement can check that a job fits before placing it.

weights + gradients + optimizer state + activations (+ the fixed per-GPU overhead serving uses):
- full: mixed precision with fp32 AdamW, 16 bytes per parameter (bf16 weights 2 + bf16 grads 2 +
  fp32 master 4 + Adam m and v 8), the ZeRO paper's accounting (Rajbhandari et al., 2020, sec. 3.1);
- lora: frozen weights at their checkpoint dtype + 16 bytes per adapter parameter;
- qlora: 4-bit weights (~4.25 bits with scales, as sizing counts AWQ/GPTQ) + 16 bytes per adapter parameter;
- activations without gradient checkpointing, per layer 34*s*b*h bytes at 16-bit (Korthikanti et al.,
  2022, "Reducing Activation Recomputation", eq. 1, less its 5*a*s^2*b attention-score term: fused
  attention, transformers' default SDPA or FlashAttention, never stores the s x s scores), plus fp32
  logits and their gradient (b*s*vocab*8 bytes), which dominate for small models with large vocabularies.
An estimate, deliberately on the high side: allocator fragmentation is not modelled.
"""

from __future__ import annotations

from typing import Any

from argosy.catalog.sizing import (
    FIXED_OVERHEAD_GB,
    GB,
    WEIGHT_BYTES,
    ModelSpec,
    load_model,
    model_from_config,
)
from argosy.core.errors import ConfigError

FULL_BYTES_PER_PARAM = 16
ADAPTER_BYTES_PER_PARAM = 16  # fp32 weight 4 + grad 4 + Adam m, v 8
DEFAULT_VOCAB = 128_256  # Llama 3's, for built-in models whose table has no vocab size (errs large)
DEFAULT_LORA_R = 8
METHODS = ("lora", "qlora", "full")


def lora_params(model: ModelSpec, r: int = DEFAULT_LORA_R) -> int:
    """Adapter parameters for LoRA on q/k/v/o (the default targets): r x (in + out) per projection."""
    q_out = model.heads * model.head_dim
    kv_out = model.kv_heads * model.head_dim
    per_layer = r * ((model.hidden + q_out) + 2 * (model.hidden + kv_out) + (q_out + model.hidden))
    return int(model.layers * per_layer)


def train_memory_gb(
    model_config: dict[str, Any] | ModelSpec | str,
    method: str,
    batch: int,
    seq_len: int,
    lora_r: int = DEFAULT_LORA_R,
) -> float:
    """GB (10^9 bytes) one device needs to fine-tune `model_config` (a config.json dict, a ModelSpec,
    or a built-in name / path for sizing.load_model) with `method` at `batch` x `seq_len` tokens."""
    if method not in METHODS:
        raise ConfigError(f"unknown training method '{method}'", fix=f"use one of {', '.join(METHODS)}")
    if batch < 1 or seq_len < 1:
        raise ConfigError("batch and seq_len must be at least 1", fix="pass positive numbers")
    vocab = DEFAULT_VOCAB
    if isinstance(model_config, dict):
        vocab = int(model_config.get("vocab_size") or DEFAULT_VOCAB)
        spec = model_from_config(model_config, str(model_config.get("_name_or_path", "model")))
    elif isinstance(model_config, str):
        spec = load_model(model_config)
    else:
        spec = model_config
    params = spec.params
    if method == "full":
        state = params * FULL_BYTES_PER_PARAM
    else:
        weight_bytes = WEIGHT_BYTES["gptq"] if method == "qlora" else WEIGHT_BYTES.get(spec.native_dtype, 2.0)
        state = params * weight_bytes + lora_params(spec, lora_r) * ADAPTER_BYTES_PER_PARAM
    activations = spec.layers * seq_len * batch * spec.hidden * 34
    logits = batch * seq_len * vocab * 8
    return (state + activations + logits) / GB + FIXED_OVERHEAD_GB
