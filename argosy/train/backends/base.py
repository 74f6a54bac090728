"""What a trainer backend provides to the runner: load a model and data for a spec, take optimizer
steps, evaluate, save and restore its state, save the result.

The runner owns everything around that (events, checkpoint directories and their atomic renames,
resume, signals, carbon, exit codes), so a backend never has to get those right again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from argosy.core.errors import ArgosyError
from argosy.train.spec import TrainSpec


class BadInputError(ArgosyError):
    """The base model, dataset or options cannot be trained (exit 2: retrying will not help)."""


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    lr: float  # the learning rate this step used
    tokens: int  # input tokens (not padding) this step processed
    epoch: float  # epochs completed after this step


class Session(Protocol):
    """One prepared training run (model, optimizer and data in memory)."""

    total_steps: int
    device: str  # "cpu" or "cuda"
    has_validation: bool

    def train_step(self, step: int) -> StepResult:
        """Do optimizer step number `step` (1-based); data order depends only on the seed and step."""
        ...

    def evaluate(self) -> float:
        """Mean token loss over the validation split."""
        ...

    def save_state(self, directory: Path) -> None:
        """Write everything resuming needs into an existing, empty `directory`."""
        ...

    def load_state(self, directory: Path) -> None: ...

    def save_output(self, directory: Path) -> str:
        """Write the trained result into an existing, empty `directory`; return 'adapter' or 'merged'."""
        ...


class Backend(Protocol):
    name: str

    def unavailable_reason(self, spec: TrainSpec) -> tuple[str, str] | None:
        """(what is missing, fix) when this backend cannot run `spec` on this machine, else None."""
        ...

    def check(self, spec: TrainSpec) -> None:
        """Cheap checks of the inputs (base model dir, dataset rows) before anything heavy is loaded;
        raise BadInputError or DatasetError naming what is wrong."""
        ...

    def prepare(self, spec: TrainSpec) -> Session:
        """Load and check the base model and dataset; raise BadInputError (or DatasetError) when unusable."""
        ...
