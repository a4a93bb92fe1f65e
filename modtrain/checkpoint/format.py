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
"""

from __future__ import annotations

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
