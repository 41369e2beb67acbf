"""The validation pass every entry point shares (`areal train`, `eval`, `config`, `submit`, `slurm`).

Everything a run can be refused for is found here, before a directory is written or Ray starts, and said in
one line naming the key or file and the fix (``ConfigError``): the override keys against the schema (with or
without Hydra's ``+``; a typo gets the nearest key), the values (``__post_init__`` checks), settings the run
would not read, every ``module:name`` the config names, and, for a run on this machine (``local``), its
files (model, dataset rows, checkpoint to resume, out_dir) and resources (GPUs, the cluster's address).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from areal.config import TrainConfig
from areal.config.applicability import check_read
from areal.config.keys import config_keys, known, nearest
from launch.config_loader import CONFIG_DIR, ConfigError, load_config
from launch.resources import check_resources

__all__ = ["ConfigError", "check_local", "validate"]


def validate(overrides: list[str], *, local: bool = True, base: Path | None = None) -> tuple[TrainConfig, str]:
    """(config, resolved YAML) of ``overrides``, or ConfigError with one line naming the key and the fix.

    ``local=False`` (a job for a cluster): the files and resources it names are the cluster's, not checked here.
    """
    cfg, resolved = load_config(normalize_overrides(overrides), base=base)
    try:
        check_read(cfg, TrainConfig())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_imports(cfg)
    if local:
        check_local(cfg)
    return cfg, resolved


def normalize_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` checked against the schema and rewritten so Hydra's ``+`` prefixes never matter: a known key
    is set whether or not it was written with ``+``, an unknown one is refused (Hydra would add it to the config,
    where nothing reads it), a new entry of a dict (``rollout.resources.pool=1``) is added."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        bad = next((o for o in overrides if "=" not in o), None)
        detail = f"{bad!r}: it has no '='" if bad else str(exc).splitlines()[0]
        raise ConfigError(f"config error: cannot read the override {detail}; write key=value (e.g. "
                          "rollout.workers=2)") from None
    groups = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in CONFIG_DIR.iterdir() if p.is_dir()}
    table = config_keys()
    normalized = []
    for override, line in zip(parsed, overrides):
        key = override.key_or_group
        if override.is_delete():
            raise ConfigError(f"config error: {line}: a key cannot be deleted; set its value instead "
                              f"({key}=...)")
        if key in groups:
            check_group(key, override.value(), groups[key])
            normalized.append(line)
            continue
        if key == "hydra" or key.startswith("hydra."):
            raise ConfigError(f"config error: {key}: areal composes its config without Hydra's runtime settings "
                              "(hydra.*); logging.verbose=true prints more of what a run does")
        if not known(key):
            raise ConfigError(unknown_key_message(key))
        value = line.split("=", 1)[1]
        info = table.get(key)
        normalized.append(f"{key}={value}" if info is not None else f"++{key}={value}")
    return normalized


def check_group(group: str, choice, options: list[str]) -> None:
    if choice not in options:
        raise ConfigError(f"config error: {group}={choice}: no such preset in configs/{group}/; choose one of "
                          f"{', '.join(options)}")


def unknown_key_message(key: str) -> str:
    """One line for a key the schema does not have, with the nearest known one when there is one."""
    guess = nearest(key)
    section = key.rpartition(".")[0]
    listing = f"areal config --keys {section}" if section and known(section) else "areal config --keys"
    hint = f"did you mean {guess}? " if guess else ""
    parent = next((key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)
                   if key.rsplit(".", i)[0] in config_keys()), None)
    if parent is not None and config_keys()[parent].type != "section":  # task.path.0, task.eval_sets.0.path
        return (f"config error: {key}: {parent} is one value ({config_keys()[parent].type}); set it whole, e.g. "
                f"{parent}=[...]")
    return f"config error: unknown key {key}; {hint}`{listing}` lists the keys"


def check_imports(cfg: TrainConfig) -> None:
    """Every ``module:name`` the config names imports here, as it will in the workers."""
    from rollouts.data.columns import DatasetRowError
    from rollouts.data.sources import DatasetSourceError
    from rollouts.rewards.suite import RewardConfigError
    from rollouts.tasks.factory import check_rewards

    try:
        check_rewards(cfg)
        if cfg.env.type == "custom":
            from rollouts.envs.factory import import_factory

            import_factory(cfg.env.factory)
        if cfg.task.type == "image_prompts" and ":" in cfg.task.reward:
            from rollouts.image_rewards import import_reward

            import_reward(cfg.task.reward)
    except (RewardConfigError, DatasetRowError, DatasetSourceError, ValueError) as exc:
        raise ConfigError(one_line(exc)) from None


def check_local(cfg: TrainConfig):
    """The files and resources of a run on this machine: out_dir can be made and is free (or continued), the
    checkpoint to resume verifies, the model and the dataset's rows are there, the GPUs and the cluster asked for
    exist. Returns the checkpoint to resume (``find_resume_checkpoint``), or None."""
    from launch.run_dir import RunDirError, check_run_dir
    from rollouts.data.columns import DatasetRowError
    from rollouts.data.sources import DatasetSourceError

    try:
        check_writable(cfg.out_dir, "out_dir")
        resume = checkpoint_to_resume(cfg)
        check_run_dir(cfg, resumable=resume is not None)
        check_model_path(cfg)
        check_task_files(cfg)
        check_resources(cfg)
    except (RunDirError, DatasetRowError, DatasetSourceError, FileNotFoundError, ValueError) as exc:
        raise ConfigError(one_line(exc)) from None
    return resume


def checkpoint_to_resume(cfg: TrainConfig):
    """``find_resume_checkpoint`` (which needs torch) only when the config asks to resume."""
    if not (cfg.checkpoint.resume or cfg.checkpoint.resume_from):
        return None
    from launch.train import find_resume_checkpoint
    from learners.checkpoint import CheckpointError

    try:
        return find_resume_checkpoint(cfg)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None


def check_writable(path: str, key: str) -> None:
    """``path`` is a directory, or one can be made there: its nearest existing ancestor is a directory this
    process can create entries in (tried, then removed: permissions alone do not tell, e.g. /proc as root)."""
    import tempfile

    target = Path(path).expanduser().absolute()
    ancestor = next(p for p in (target, *target.parents) if p.exists())
    if not ancestor.is_dir():
        raise ValueError(f"config error: {key}={path}: {ancestor} is a file, so no directory can be made under it; "
                         f"choose another {key}")
    if ancestor == target:
        return
    try:
        Path(tempfile.mkdtemp(dir=ancestor, prefix=".areal-probe-")).rmdir()
    except OSError as exc:
        raise ValueError(f"config error: {key}={path}: cannot create a directory in {ancestor} ({exc.strerror}); "
                         f"choose a writable {key}") from None


def check_model_path(cfg: TrainConfig) -> None:
    if not cfg.model_path or cfg.model_path == "smollm2":
        return  # built or converted on first use
    marker = "model_index.json" if cfg.is_diffusion else "config.json"
    path = Path(cfg.model_path).expanduser()
    kind = "a diffusers pipeline directory" if cfg.is_diffusion else "a Hugging Face model directory"
    if not path.exists():
        raise FileNotFoundError(f"model_path = {cfg.model_path!r}: no such directory; give {kind}, or leave "
                                "model_path empty for the tiny demo model")
    if not (path / marker).is_file():
        raise FileNotFoundError(f"model_path = {cfg.model_path!r} has no {marker}; give {kind}, or leave "
                                "model_path empty for the tiny demo model")
    if not cfg.is_diffusion:
        check_context_fits(cfg, path / marker)


def check_context_fits(cfg: TrainConfig, config_json: Path) -> None:
    """engine.max_model_len (prompt + rollout.max_new_tokens) within the positions the model was built for: vLLM
    would refuse it only once Ray and the engine are up."""
    import json

    try:
        positions = json.loads(config_json.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable config is the engine's to report, with the model's own words
    if isinstance(positions, int) and cfg.engine.max_model_len > positions:
        raise ValueError(f"engine.max_model_len = {cfg.engine.max_model_len} exceeds the {positions} positions of "
                         f"{cfg.model_path} (max_position_embeddings): lower engine.max_model_len, with "
                         "rollout.max_new_tokens below it")


def check_task_files(cfg: TrainConfig) -> None:
    t = cfg.task
    if t.is_dataset:
        from rollouts.tasks.dataset import check_dataset_rows

        check_dataset_rows(cfg)
    elif t.type == "image_prompts" and t.path and not Path(t.path).expanduser().is_file():
        raise FileNotFoundError(f"task.path = {t.path!r}: no such file (a text file with one prompt per line); "
                                "leave it empty for the class names of a class-conditional pipeline")
    if t.reward_model_path and not Path(t.reward_model_path).expanduser().is_dir():
        raise FileNotFoundError(f"task.reward_model_path = {t.reward_model_path!r}: no such directory (a CLIP "
                                "model with aesthetic_head.safetensors)")


def one_line(exc: BaseException) -> str:
    """An error as one line that starts with ``config error`` (messages from below may span lines)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if text.startswith("config error") else f"config error: {text}"
