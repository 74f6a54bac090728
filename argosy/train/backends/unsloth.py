"""The `unsloth` trainer backend: Unsloth's patched model and fused LoRA kernels, then the same
loop as `hf` (Unsloth models are transformers/PEFT models, so steps, checkpoints and output are
shared). It runs only where Unsloth does: an NVIDIA GPU with the `unsloth` package. Elsewhere it
says so before loading anything, so a job placed on the wrong node fails with a reason, not a trace.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from argosy.train.backends.hf import HfBackend, HfSession, missing_packages
from argosy.train.spec import TrainSpec

UNSLOTH_FIX = "run it on an NVIDIA GPU node with `pip install unsloth`, or use backend 'hf'"


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available()) and torch.version.cuda is not None


class UnslothSession(HfSession):
    def __init__(self, spec: TrainSpec) -> None:
        import unsloth  # noqa: F401  (it patches transformers, so it must come first)

        super().__init__(spec)

    def _load(self, base: Path) -> tuple[Any, Any]:
        from unsloth import FastLanguageModel

        spec = self.spec
        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(base),
            max_seq_length=spec.max_seq_len,
            load_in_4bit=spec.method == "qlora",
            full_finetuning=spec.method == "full",
        )
        if spec.method == "full":
            return model, tok
        model = FastLanguageModel.get_peft_model(
            model,
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=spec.target_modules
            or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            random_state=spec.seed,
            use_gradient_checkpointing=False,
        )
        return model, tok


class UnslothBackend:
    name = "unsloth"

    def unavailable_reason(self, spec: TrainSpec) -> tuple[str, str] | None:
        missing = missing_packages()
        if missing:
            return (
                f"trainer backend 'unsloth' needs {', '.join(missing)}, which is not installed",
                UNSLOTH_FIX,
            )
        gpu = _cuda()
        pkg = importlib.util.find_spec("unsloth") is not None
        if not gpu or not pkg:
            lacks = [w for w, ok in (("an NVIDIA GPU (CUDA)", gpu), ("the unsloth package", pkg)) if not ok]
            return (
                f"trainer backend 'unsloth' needs {' and '.join(lacks)}; this node has neither"
                if len(lacks) == 2
                else f"trainer backend 'unsloth' needs {lacks[0]}, which this node lacks",
                UNSLOTH_FIX,
            )
        return None

    def check(self, spec: TrainSpec) -> None:
        HfBackend().check(spec)

    def prepare(self, spec: TrainSpec) -> UnslothSession:
        return UnslothSession(spec)
