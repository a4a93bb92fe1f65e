"""megatron-core's parallel_state seen through the `mpu` interface DeepSpeed expects."""

from __future__ import annotations

from megatron.core import parallel_state as ps


class MegatronMPU:
    """DeepSpeed reads model-parallel and data-parallel groups through these getters."""

    def get_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_group(self):
        return ps.get_tensor_model_parallel_group()

    def get_data_parallel_rank(self) -> int:
        return ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return ps.get_data_parallel_group()

    def get_pipeline_model_parallel_rank(self) -> int:
        return ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return ps.get_pipeline_model_parallel_world_size()

    def get_pipeline_model_parallel_group(self):
        return ps.get_pipeline_model_parallel_group()
