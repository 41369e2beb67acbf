"""Field checks shared by the config schemas; every error names the dotted key and the fix."""

from __future__ import annotations


def require(condition: bool, key: str, value, expected: str) -> None:
    """Raise ValueError naming ``key`` when ``condition`` is false."""
    if not condition:
        raise ValueError(f"config error: {key} = {value!r}; expected {expected}")


def check_resources(resources: dict, key: str) -> None:
    """Custom Ray resources: positive amounts, not the CPU/GPU/memory that ``num_cpus``/``num_gpus`` set."""
    for name, amount in resources.items():
        require(name not in ("CPU", "GPU", "memory", "object_store_memory"), key, dict(resources),
                f"custom resource names only ({name} is set by its own key, e.g. num_cpus / num_gpus)")
        require(amount > 0, f"{key}.{name}", amount, "a positive amount")


# the only numbers of the schema where a negative value means something (-1: "the other bound", "task.eval_k")
SIGNED = ("task.min_operand_b", "task.max_operand_b", "k")


def check_signs(cfg, prefix: str = "") -> None:
    """No count, size, rate, timeout or resource amount of the schema is negative (a negative CPU count or
    worker count would otherwise pass composition and fail inside Ray, or hang there)."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_signs(value, key + ".")
        elif isinstance(value, list):
            for item in value:
                if dataclasses.is_dataclass(item):
                    check_signs(item, f"{key}[{getattr(item, 'name', '')}].")
        elif (isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0
              and key not in SIGNED and f.name not in SIGNED):
            require(False, key, value, "a number >= 0")
