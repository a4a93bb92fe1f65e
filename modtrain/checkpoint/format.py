"""The checkpoint format: the contract between its writer (training) and its readers.

Names and the few pure functions that checkpoint.engine (DeepSpeed) and checkpoint.read
(plain torch) must agree on:
  RUN/checkpoints/
    step_00001000/            one complete checkpoint (a DeepSpeed tag directory):
      mp_rank_*_model_states.pt, *optim_states.pt   DeepSpeed's model and ZeRO-sharded states
      layer_*-model_states.pt  a pipeline run's module weights, one file per layer (and rank)
      rng_rank_00000.pt ...   torch RNG state of every rank (loaded with weights_only=True)
      modtrain.json           step, data-loader state, resolved config, parallel layout
      checksums.json          size and sha256 of every other file (checkpoint/files.py)
    latest                    the tag of the newest complete checkpoint
    .universal[-pipeline]-step_00001000/   DeepSpeed universal copy, for another layout
      checksums.json          its own checksums, over every file of the tree
A tag is complete once its modtrain.json exists (it is renamed into place with the tag).
modtrain.json is one `CheckpointState` (below); older tags wrote the same fields without
`format_version`, and the oldest kept them in DeepSpeed's client state instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from modtrain.errors import ModtrainError

FORMAT_VERSION = 1  # modtrain.json's `format_version` written
READABLE_VERSIONS = (1,)  # version 1 also without the field (written before it was recorded)

LATEST = "latest"
STATE_FILE = "modtrain.json"  # in each tag: step, data-loader state, config, layout (JSON)
MANIFEST = "checksums.json"
TMP_PREFIX = ".tmp-"  # a tag being written
UNIVERSAL_PREFIX = ".universal-"  # parameter folders named as in GPT
UNIVERSAL_PIPELINE_PREFIX = ".universal-pipeline-"  # named as in the pipeline module
# DeepSpeed copies these scripts, which unpickle freely, into every ZeRO checkpoint; modtrain
# deletes them before a tag is complete (`modtrain convert` does what they do, safely).
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")

# Objects DeepSpeed pickles into its checkpoints beyond tensors and containers, found by
# listing the globals of real checkpoints of every ZeRO stage, fp32/bf16, pipeline and
# tensor parallelism, and universal copies (tests/checkpoint/engine/test_safety.py).
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("step_"))


def universal_tag(tag: str, pipeline: bool) -> str:
    """Directory of `tag`'s universal checkpoint named for a pipeline or a flat (GPT) model."""
    return (UNIVERSAL_PIPELINE_PREFIX if pipeline else UNIVERSAL_PREFIX) + tag


def original_tag(tag: str) -> str:
    """The tag a universal copy was made from (a tag itself otherwise)."""
    for prefix in (UNIVERSAL_PIPELINE_PREFIX, UNIVERSAL_PREFIX):
        if tag.startswith(prefix):
            return tag.removeprefix(prefix)
    return tag


class StateError(ModtrainError, ValueError):
    """A modtrain.json that holds no CheckpointState; a ValueError too, so that what describes
    damaged files (`modtrain inspect`) treats it as one."""


def _fail(source: str, problem: str) -> StateError:
    return StateError(
        f"{source} is not a modtrain checkpoint state ({problem}); resume from or convert a "
        "checkpoint saved by modtrain, or pass an older tag")


def _int(value: Any, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, f"{name} is {value!r}, not an integer")
    return value


@dataclass(frozen=True)
class CheckpointLayout:
    """The parallel layout a checkpoint was saved with (what decides how it loads)."""

    tensor: int
    pipeline: int
    data: int  # data-parallel size
    zero_stage: int

    @classmethod
    def from_json(cls, value: Any, source: str) -> CheckpointLayout:
        if not isinstance(value, dict):
            raise _fail(source, f"layout is {value!r}, not an object")
        names = [f.name for f in fields(cls)]
        if missing := [n for n in names if n not in value]:
            raise _fail(source, f"layout has no {', '.join(missing)}")
        if unknown := sorted(set(value) - set(names)):
            raise _fail(source, f"layout has unknown fields {', '.join(unknown)}")
        return cls(**{n: _int(value[n], f"layout.{n}", source) for n in names})

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class CheckpointState:
    """modtrain.json: what modtrain itself keeps in a tag, beside DeepSpeed's files."""

    step: int
    config: dict[str, Any]  # the full resolved training config, as config_to_dict writes it
    # The data loader's position (data.read's state_dict: epoch, consumed_samples,
    # data_fingerprint); empty where a state was written without one.
    data: dict[str, Any] = field(default_factory=dict)
    # None where a state was written without one (the oldest, in DeepSpeed's client state).
    layout: CheckpointLayout | None = None
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, value: Any, source: str) -> CheckpointState:
        """A state from modtrain.json's object; `source` names it in the one-line error."""
        if not isinstance(value, dict):
            raise _fail(source, "not a JSON object")
        if unknown := sorted(set(value) - {f.name for f in fields(cls)}):
            raise _fail(source, f"unknown fields {', '.join(unknown)}")
        return cls._of(value, source, ("step", "config"))

    @classmethod
    def from_client_state(cls, value: dict[str, Any], source: str) -> CheckpointState:
        """The state older checkpoints kept in DeepSpeed's client state (no modtrain.json):
        under "modtrain", or, the oldest, as top-level keys beside DeepSpeed's own."""
        state = value.get("modtrain", value)
        if not isinstance(state, dict) or "config" not in state:
            raise ModtrainError(f"{source} was not written by modtrain (no {STATE_FILE} and no "
                                "config in the DeepSpeed client state)")
        return cls._of(state, source, ("config",))

    @classmethod
    def _of(cls, value: dict[str, Any], source: str, required: tuple[str, ...]
            ) -> CheckpointState:
        if missing := [n for n in required if n not in value]:
            raise _fail(source, f"no {', '.join(missing)}")
        version = _int(value.get("format_version", 1), "format_version", source)
        if version not in READABLE_VERSIONS:
            raise StateError(
                f"{source} has format_version {version}, which this modtrain cannot read "
                f"(it reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade modtrain")
        for name, kind in (("config", dict), ("data", dict)):
            if not isinstance(value.get(name, {}), kind):
                raise _fail(source, f"{name} is not an object")
        layout = value.get("layout")
        return cls(
            step=_int(value.get("step", 0), "step", source),
            config=value["config"],
            data=value.get("data", {}),
            layout=None if layout is None else CheckpointLayout.from_json(layout, source),
            format_version=version,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "data": self.data, "config": self.config}
        if self.layout is not None:
            out["layout"] = self.layout.to_json()
        out["format_version"] = self.format_version
        return out

    def saved_layout(self, source: str) -> CheckpointLayout:
        """The layout, for what needs it (resume, universal copies); one line if none."""
        if self.layout is None:
            raise _fail(source, "no layout")
        return self.layout

    @property
    def model(self) -> dict[str, Any]:
        """The config's model section ({} where a state holds none)."""
        return self.config.get("model", {})
