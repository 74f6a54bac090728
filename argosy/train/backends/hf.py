"""The `hf` trainer backend: a transformers causal LM, PEFT LoRA (or full fine-tuning), and a plain
PyTorch loop.

Why not transformers' Trainer or TRL's SFTTrainer: the runner must stop at a step boundary on
SIGTERM, write checkpoints atomically (tmp dir + rename), and report its own per-step events;
Trainer writes checkpoints in place and owns the loop, so each of those would be a fight with its
callbacks. The loop here is the same maths (AdamW, linear warmup/decay, grad clipping at 1.0,
token-weighted loss over gradient accumulation), and bench/train.py measures it against Trainer.

torch, transformers and peft are imported inside the functions: this module is loaded only by
the runner process (the `train` extra), never by the control plane.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from argosy.train.backends.base import BadInputError, StepResult
from argosy.train.examples import Example, read_examples, split_examples
from argosy.train.spec import TrainSpec

TRAIN_FIX = "pip install torch==2.13.0 && pip install -e '.[train]'"
WARMUP_FRACTION = 0.03
MAX_GRAD_NORM = 1.0
IGNORE = -100  # the label id cross-entropy skips: prompts and padding
# Attention projections by name, the LoRA default that the PEFT and QLoRA papers use for Llama-likes.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def missing_packages(names: tuple[str, ...] = ("torch", "transformers", "peft", "safetensors")) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def check_base_model(path_text: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise BadInputError(
            f"base model '{path_text}' not found: no such directory",
            fix="pass a local Hugging Face model dir (config.json, weights, tokenizer); "
            "`argosy model make-tiny PATH` makes a small one",
        )
    if not (path / "config.json").is_file():
        raise BadInputError(
            f"base model '{path_text}' is not a Hugging Face model dir: it has no config.json",
            fix="point base_model at the directory that holds config.json and the weights",
        )
    return path.resolve()


def linear_lr(step_index: int, total: int, warmup: int) -> float:
    """transformers' get_linear_schedule_with_warmup multiplier at 0-based optimizer step `step_index`."""
    if step_index < warmup:
        return step_index / max(1, warmup)
    return max(0.0, (total - step_index) / max(1, total - warmup))


def warmup_steps(total: int) -> int:
    return math.ceil(total * WARMUP_FRACTION)


def encode(example: Example, tok: Any, max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one example; labels are IGNORE where the model should not learn."""
    ids: list[int] = []
    labels: list[int] = []
    if example.messages:
        pieces = _chat_pieces(list(example.messages), tok)
    else:
        pieces = list(example.segments)
        if pieces and pieces[-1][1] and tok.eos_token:
            # End the answer with EOS, so the model learns to stop after it.
            pieces.append((tok.eos_token, True))
    for text, learn in pieces:
        if not text:
            continue
        part = tok(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if learn else [IGNORE] * len(part)
    if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
        ids, labels = [tok.bos_token_id, *ids], [IGNORE, *labels]
    return ids[:max_len], labels[:max_len]


def _chat_pieces(messages: list[dict[str, str]], tok: Any) -> list[tuple[str, bool]]:
    """Render with the tokenizer's chat template, learning only the assistant turns.

    Each turn's text is the difference between the rendering of the conversation up to it and up
    to the one before; an assistant turn's header (the generation prompt) is not learnt. Templates
    that are not prefix-stable (they rewrite earlier turns) are learnt whole rather than guessed at.
    """
    if not getattr(tok, "chat_template", None):
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return [(text, True)]

    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        if not msgs:
            return ""
        return str(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))

    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            head = render(messages[:i], True)
            if not head.startswith(done):
                return [(render(messages, False), True)]
            pieces.append((head[len(done) :], False))
            done = head
        full = render(messages[: i + 1], False)
        if not full.startswith(done):
            return [(render(messages, False), True)]
        pieces.append((full[len(done) :], m["role"] == "assistant"))
        done = full
    return pieces


class HfSession:
    """A prepared run: model, tokenizer, encoded data, optimizer, schedule."""

    def __init__(self, spec: TrainSpec, model_loader: Any = None) -> None:
        import torch
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.spec = spec
        self.torch = torch
        base = check_base_model(spec.base_model)
        examples = read_examples(Path(spec.dataset))  # before the model: a bad dataset fails fast
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(spec.seed)
        threads = spec.extra.get("threads")
        if isinstance(threads, int) and threads > 0:
            torch.set_num_threads(threads)
        self.model, self.tok = (model_loader or self._load)(base)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        train_ex, val_ex = split_examples(examples, spec.val_fraction, spec.seed)
        self.train = self._encode_all(train_ex)
        self.val = self._encode_all(val_ex) if val_ex else []
        if not self.train:
            raise BadInputError(
                f"no example in {spec.dataset} has answer tokens within max_seq_len={spec.max_seq_len}",
                fix="raise --max-seq-len, or shorten the prompts",
            )
        self.has_validation = bool(self.val)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.mb_per_epoch = math.ceil(len(self.train) / spec.batch_size)
        self.steps_per_epoch = math.ceil(self.mb_per_epoch / spec.grad_accum)
        self.total_steps = spec.max_steps or max(1, math.ceil(spec.epochs * self.steps_per_epoch))
        self.optimizer = torch.optim.AdamW(self.trainable, lr=spec.lr, weight_decay=0.0)
        warm = warmup_steps(self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: linear_lr(i, self.total_steps, warm)
        )
        self._perm_epoch = -1
        self._perm: list[int] = []
        use_bf16 = self.device == "cuda" and torch.cuda.is_bf16_supported()
        self._autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if use_bf16
            else (lambda: torch.autocast("cpu", enabled=False))
        )

    # -- loading -------------------------------------------------------------------------------

    def _load(self, base: Path) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = self.spec
        try:
            tok = AutoTokenizer.from_pretrained(base)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInputError(
                f"base model '{spec.base_model}': cannot load its tokenizer ({exc})",
                fix="the model dir needs tokenizer files (tokenizer.json / tokenizer_config.json)",
            ) from exc
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if spec.method == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs = {
                "quantization_config": BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.bfloat16,
                    bnb_4bit_use_double_quant=True,
                ),
                "device_map": {"": 0},
            }
        elif self.device == "cuda" and spec.method == "lora":
            kwargs = {"dtype": torch.bfloat16}  # frozen base in bf16; PEFT keeps the adapter in fp32
        try:
            model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInputError(
                f"base model '{spec.base_model}' cannot be loaded as a causal LM ({exc})",
                fix="use a decoder-only Hugging Face model dir with safetensors weights",
            ) from exc
        if self.device == "cuda" and spec.method != "qlora":
            model = model.to("cuda")
        model.config.use_cache = False
        return self._adapt(model), tok

    def _adapt(self, model: Any) -> Any:
        spec = self.spec
        if spec.method == "full":
            for p in model.parameters():
                p.requires_grad_(True)
            return model
        from peft import LoraConfig, get_peft_model

        if spec.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = spec.target_modules or [t for t in DEFAULT_TARGETS if t in names] or None
        if spec.target_modules:
            unknown = sorted(set(spec.target_modules) - names)
            if unknown:
                linear = sorted(
                    {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"}
                )
                raise BadInputError(
                    f"target_modules {unknown} are not modules of {spec.base_model}",
                    fix=f"use some of its linear layers: {', '.join(linear)}",
                )
        cfg = LoraConfig(
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
            bias="none",
        )
        try:
            return get_peft_model(model, cfg)
        except ValueError as exc:  # e.g. an architecture PEFT has no default targets for
            raise BadInputError(
                f"cannot add LoRA to {spec.base_model}: {exc}", fix="pass --target-modules explicitly"
            ) from exc

    def _encode_all(self, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
        out = []
        for ex in examples:
            ids, labels = encode(ex, self.tok, self.spec.max_seq_len)
            if any(x != IGNORE for x in labels[1:]):  # the first label never counts (nothing predicts it)
                out.append((ids, labels))
        return out

    # -- data order ------------------------------------------------------------------------------

    def _micro_batch(self, m: int) -> list[tuple[list[int], list[int]]]:
        """Micro-batch number `m` of an endless sequence of shuffled epochs (a pure function of seed, m)."""
        epoch, i = divmod(m, self.mb_per_epoch)
        if epoch != self._perm_epoch:
            g = self.torch.Generator().manual_seed(self.spec.seed * 1_000_003 + epoch)
            self._perm = self.torch.randperm(len(self.train), generator=g).tolist()
            self._perm_epoch = epoch
        bs = self.spec.batch_size
        return [self.train[j] for j in self._perm[i * bs : (i + 1) * bs]]

    def _collate(self, rows: list[tuple[list[int], list[int]]]) -> tuple[Any, Any, Any]:
        torch = self.torch
        width = max(len(ids) for ids, _ in rows)
        pad = self.tok.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (i, lab) in enumerate(rows):
            ids[r, : len(i)] = torch.tensor(i)
            labels[r, : len(lab)] = torch.tensor(lab)
            mask[r, : len(i)] = 1
        dev = self.device
        return ids.to(dev), mask.to(dev), labels.to(dev)

    def _loss_sum(self, ids: Any, mask: Any, labels: Any) -> Any:
        import torch.nn.functional as F

        with self._autocast():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        shift = logits[:, :-1, :].float()
        target = labels[:, 1:]
        return F.cross_entropy(
            shift.reshape(-1, shift.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )

    # -- the Session interface -------------------------------------------------------------------

    def train_step(self, step: int) -> StepResult:
        torch = self.torch
        spec = self.spec
        self.model.train()
        batches = [
            self._collate(self._micro_batch((step - 1) * spec.grad_accum + k)) for k in range(spec.grad_accum)
        ]
        counted = sum(int((lab[:, 1:] != IGNORE).sum()) for _, _, lab in batches)
        tokens = sum(int(mask.sum()) for _, mask, _ in batches)
        lr = float(self.scheduler.get_last_lr()[0])
        total = 0.0
        for ids, mask, labels in batches:
            loss = self._loss_sum(ids, mask, labels) / max(1, counted)
            loss.backward()
            total += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, MAX_GRAD_NORM))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        epoch = step * spec.grad_accum / self.mb_per_epoch
        return StepResult(loss=total, grad_norm=grad_norm, lr=lr, tokens=tokens, epoch=round(epoch, 4))

    def evaluate(self) -> float:
        torch = self.torch
        self.model.eval()
        loss = 0.0
        counted = 0
        bs = self.spec.batch_size
        with torch.no_grad():
            for i in range(0, len(self.val), bs):
                ids, mask, labels = self._collate(self.val[i : i + bs])
                loss += float(self._loss_sum(ids, mask, labels))
                counted += int((labels[:, 1:] != IGNORE).sum())
        return loss / max(1, counted)

    def _weights(self) -> dict[str, Any]:
        if self.spec.method == "full":
            return {}
        from peft import get_peft_model_state_dict

        return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(self.model).items()}

    def save_state(self, directory: Path) -> None:
        import safetensors.torch as st

        torch = self.torch
        if self.spec.method == "full":
            st.save_model(self.model, str(directory / "model.safetensors"))  # handles tied weights
        else:
            st.save_file(self._weights(), str(directory / "adapter.safetensors"))
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if self.device == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, directory / "rng.pt")

    def load_state(self, directory: Path) -> None:
        import safetensors.torch as st

        torch = self.torch
        if self.spec.method == "full":
            st.load_model(self.model, str(directory / "model.safetensors"), device=self.device)
        else:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, st.load_file(str(directory / "adapter.safetensors")))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        rng = torch.load(directory / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])

    def save_output(self, directory: Path) -> str:
        if self.spec.method == "full":
            self.model.save_pretrained(directory, safe_serialization=True)
            self.tok.save_pretrained(directory)
            return "merged"
        self.model.save_pretrained(directory, safe_serialization=True)
        cfg_path = directory / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(Path(self.spec.base_model).resolve())
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        self.tok.save_pretrained(directory)  # engines that load an adapter alone still find the tokenizer
        return "adapter"


class HfBackend:
    name = "hf"

    def unavailable_reason(self, spec: TrainSpec) -> tuple[str, str] | None:
        missing = missing_packages()
        if missing:
            return (
                f"trainer backend 'hf' needs {', '.join(missing)}, which is not installed on this node",
                TRAIN_FIX,
            )
        return None

    def check(self, spec: TrainSpec) -> None:
        check_base_model(spec.base_model)
        read_examples(Path(spec.dataset))

    def prepare(self, spec: TrainSpec) -> HfSession:
        return HfSession(spec)
