"""Typed configuration schemas, one module per subsystem.

Plain dataclasses (no Hydra import here): ``launch/`` registers them with
Hydra's ConfigStore so every YAML key is checked against these types, and each
``__post_init__`` rejects bad values with an error naming the dotted key.
"""

from areal.config.algo import AlgoConfig
from areal.config.controller import ControllerConfig
from areal.config.diffusion import DiffusionConfig
from areal.config.engine import EngineConfig
from areal.config.env import EnvConfig
from areal.config.experiment import CheckpointConfig, ClusterConfig, TrainConfig
from areal.config.learner import ByzantineConfig, LearnerConfig, LoraConfig
from areal.config.logging import LoggingConfig
from areal.config.rollout import RolloutConfig
from areal.config.task import TaskConfig

__all__ = [
    "AlgoConfig",
    "ByzantineConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "ControllerConfig",
    "DiffusionConfig",
    "EngineConfig",
    "EnvConfig",
    "LearnerConfig",
    "LoggingConfig",
    "LoraConfig",
    "RolloutConfig",
    "TaskConfig",
    "TrainConfig",
]
