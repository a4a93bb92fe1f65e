"""The layout seen through the `mpu` interface DeepSpeed expects (model = tensor parallel)."""

from __future__ import annotations

from modtrain.parallel.distributed import Topology


class MegatronMPU:
    """DeepSpeed reads model-parallel and data-parallel groups through these getters."""

    def __init__(self, topo: Topology) -> None:
        if topo.groups is None:
            raise ValueError("the topology has no process groups; build it with init_distributed")
        self.topo = topo

    def get_model_parallel_rank(self) -> int:
        return self.topo.tensor_rank

    def get_model_parallel_world_size(self) -> int:
        return self.topo.tensor_size

    def get_model_parallel_group(self):
        return self.topo.groups.tensor

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.topo.data_rank

    def get_data_parallel_world_size(self) -> int:
        return self.topo.data_size

    def get_data_parallel_group(self):
        return self.topo.groups.data

    def get_pipeline_model_parallel_rank(self) -> int:
        return self.topo.pipeline_rank

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self.topo.pipeline_size

    def get_pipeline_model_parallel_group(self):
        return self.topo.groups.pipeline
