"""The typed state of a training run: what set-up resolved, which the loop and hooks read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modtrain.checkpoint.format import CheckpointLayout
from modtrain.config import Config
from modtrain.data.read.dataset import BatchLoader, ValidationSequences, ValidationSet
from modtrain.parallel import Topology
from modtrain.train.metrics import Progress
from modtrain.train.prefetch import PrefetchLoader
from modtrain.train.signals import StopFlag
from modtrain.train.sinks import MetricSink
from modtrain.train.steps import StepRunner


@dataclass
class Run:
    """Everything set-up resolved, which the loop and its hooks read."""

    config: Config
    topo: Topology
    engine: Any  # DeepSpeed's engine (plain or pipeline)
    stepper: StepRunner
    loader: BatchLoader | PrefetchLoader  # PrefetchLoader under data.prefetch
    val: ValidationSequences | ValidationSet
    progress: Progress
    sinks: list[MetricSink]
    ckpt_dir: Path
    layout: CheckpointLayout
    start_step: int
    micro_batch: int
    flops_per_token: float
    peak_tflops: float | None
    stop: StopFlag
    config_dict: dict[str, Any] = field(default_factory=dict)
    hooks: list[Any] = field(default_factory=list)  # train/hooks.py, in the order they act
    saver: Callable[[Run, int], str] | None = None  # the checkpointing hook's save

    @property
    def is_main(self) -> bool:
        return self.topo.rank == 0

    def message(self, text: str) -> None:
        self.progress.message(text)

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def emit(self, point: str, *args: Any) -> None:
        """Call `point` on every hook (evaluation and saving tell the others)."""
        for hook in self.hooks:
            getattr(hook, point)(self, *args)

    def save(self, step: int) -> str:
        """Save a checkpoint of this step (collective); returns its tag."""
        assert self.saver is not None, "the checkpointing hook is not installed"
        return self.saver(self, step)
