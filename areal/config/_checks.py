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
