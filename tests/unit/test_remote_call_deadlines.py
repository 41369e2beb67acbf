"""Every blocking Ray call in the actors has a deadline: a hung remote process must never hang the driver."""

import ast
from pathlib import Path

ACTORS = Path(__file__).resolve().parents[2] / "actors"


def blocking_ray_gets(source: str) -> list[int]:
    """Line numbers of ``ray.get(...)`` calls without a ``timeout=`` keyword."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"
                and not any(k.arg == "timeout" for k in node.keywords)):
            lines.append(node.lineno)
    return lines


def test_the_check_finds_a_ray_get_without_a_deadline():
    assert blocking_ray_gets("import ray\nray.get(ref)\nray.get(ref, timeout=5)\n") == [2]


def test_no_ray_get_in_the_actors_waits_forever():
    offenders = {path.name: lines for path in sorted(ACTORS.glob("*.py"))
                 if (lines := blocking_ray_gets(path.read_text()))}
    assert offenders == {}, f"ray.get without timeout= (file: lines): {offenders}"
