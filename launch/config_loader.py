"""Compose a TrainConfig from configs/ with Hydra, validated before anything starts.

Hydra checks every key and type against the dataclass schemas (a typo or
``rollout.workers=abc`` fails at composition); the schemas' ``__post_init__``
checks values and names the dotted key.
"""

from __future__ import annotations

import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from areal.config import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config that cannot run: the message names the key and what is expected."""


def areal_data(name: str) -> str:
    """``${areal_data:word_problems/SPLIT}`` in a preset: the path of a dataset areal generates, written on first
    use (``launch.word_problems``)."""
    family, _, split = name.partition("/")
    if family != "word_problems":
        raise ValueError(f"${{areal_data:{name}}}: the datasets areal generates are word_problems/train, "
                         "word_problems/test and word_problems/hard")
    from launch.word_problems import word_problems_path

    return word_problems_path(split)


def register_schemas() -> None:
    """Make the dataclass schema available to the YAML defaults list as ``train_schema``, and the resolvers
    presets use."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("areal_data", areal_data, replace=True)


# lines of Hydra's and OmegaConf's messages that repeat the key or describe their internals
NOISE = ("full_key:", "reference_type", "object_type", "Error merging override", "See https", "Config search path",
         "provider=", "To append to your config", "Could not override")
OVERRIDDEN = re.compile(r"Could not override '([^']+)'")


def composition_error(exc: BaseException) -> str:
    """One line for an error of Hydra's composition: the key, then what was wrong with its value."""
    cause = exc.__cause__
    key = getattr(exc, "full_key", None) or getattr(cause, "full_key", None)
    overridden = OVERRIDDEN.search(str(exc))
    if overridden:  # a key inside a list of records (task.eval_sets): name the override, not the inner key
        key = overridden.group(1)
    lines = [line.strip() for text in (str(exc), str(cause or "")) for line in text.splitlines() if line.strip()]
    detail = "; ".join(dict.fromkeys(line for line in lines if not line.startswith(NOISE)))
    hint = f"; `areal config --keys {key}` says what it takes" if key else ""
    return f"config error: {key + ': ' if key else ''}{detail}{hint}"


def load_config(overrides: list[str], config_name: str = "train", base: Path | None = None) -> tuple[TrainConfig, str]:
    """(validated TrainConfig, resolved YAML) for Hydra-style ``key=value`` overrides; ``base``: a run's resolved
    config.yaml to start from instead of configs/ (``areal eval`` of a checkpoint)."""
    register_schemas()
    if base is not None:
        # the run's values over the schema, stored as a config of its own: overrides then apply as to any other
        node = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(base))
        ConfigStore.instance().store(name="areal_run_config", node=node)
        config_name = "areal_run_config"
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            composed = compose(config_name=config_name, overrides=list(overrides))
        cfg = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_error(exc)) from None
    except ValueError as exc:  # __post_init__ checks, and Hydra's own override errors
        if str(exc).startswith("config error"):
            raise ConfigError(str(exc)) from None
        raise ConfigError(f"config error: {exc}") from None
    return cfg, OmegaConf.to_yaml(composed, resolve=True)
