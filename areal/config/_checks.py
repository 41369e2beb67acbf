"""Field checks shared by the config schemas; every error names the dotted key and the fix."""

from __future__ import annotations


def require(condition: bool, key: str, value, expected: str) -> None:
    """Raise ValueError naming ``key`` when ``condition`` is false."""
    if not condition:
        raise ValueError(f"config error: {key} = {value!r}; expected {expected}")
