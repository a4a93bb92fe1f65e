"""Process groups and the bridge between megatron-core and DeepSpeed."""

from modtrain.parallel.distributed import (
    Topology,
    destroy_distributed,
    init_distributed,
    select_accelerator,
)
from modtrain.parallel.mpu import MegatronMPU

__all__ = [
    "MegatronMPU", "Topology", "destroy_distributed", "init_distributed", "select_accelerator",
]
