"""Configuration: typed sections loaded from YAML with dotted overrides."""

from modtrain.config.load import config_from_dict, config_to_dict, load_config, save_config
from modtrain.config.schema import (
    Config,
    DataConfig,
    MoDConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "Config", "DataConfig", "ModelConfig", "MoDConfig", "ParallelConfig", "RunConfig",
    "TrainConfig", "config_from_dict", "config_to_dict", "load_config", "save_config",
]
