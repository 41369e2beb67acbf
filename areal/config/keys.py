"""Every key of the config schema, with its type, default and documentation (the docstring under each field).

The validation pass checks override keys against this table (a typo gets the nearest known key), and
``areal config --keys PREFIX`` prints it, so the schema's own docstrings are the reference a user reads.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import re
import typing
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class KeyInfo:
    """One key of the schema: ``open`` keys (dicts, lists of records) take sub-keys of their own."""

    key: str
    type: str
    default: object
    doc: str
    open: bool = False


def field_docs(cls) -> dict[str, str]:
    """The string literal under each field of dataclass ``cls`` (attribute docstrings, as Sphinx reads them)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def type_name(hint) -> str:
    """A type as a user writes it (``int``, ``float | None``, ``list[str]``)."""
    if hint is typing.Any:
        return "any"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    text = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(hint).replace("typing.", ""))
    return text.replace("List[", "list[").replace("Dict[", "dict[").replace("Optional[", "optional[")


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


@cache
def config_keys(root=None) -> dict[str, KeyInfo]:
    """Dotted key -> KeyInfo for every leaf and section of ``root`` (TrainConfig)."""
    if root is None:
        from areal.config.experiment import TrainConfig

        root = TrainConfig
    table: dict[str, KeyInfo] = {}
    _walk(root, "", table)
    return table


def _walk(cls, prefix: str, table: dict[str, KeyInfo]) -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        default = default_of(f)
        if dataclasses.is_dataclass(hint):
            table[key] = KeyInfo(key, "section", None, docs.get(f.name) or inspect.cleandoc(hint.__doc__ or ""))
            _walk(hint, key + ".", table)
            continue
        # a dict takes new keys (rollout.resources.pool=1); a list or task.path is set whole
        is_open = typing.get_origin(hint) is dict
        table[key] = KeyInfo(key, type_name(hint), default, docs.get(f.name, ""), open=is_open)


def known(key: str) -> bool:
    """Whether ``key`` is in the schema, or below a key that holds keys of its own."""
    table = config_keys()
    if key in table:
        return True
    parts = key.split(".")
    return any(table.get(".".join(parts[:i])) is not None and table[".".join(parts[:i])].open
               for i in range(1, len(parts)))


def nearest(key: str) -> str | None:
    """The known key closest to a misspelled one: same section first, then anywhere."""
    table = [k for k, info in config_keys().items() if info.type != "section"] + \
            [k for k, info in config_keys().items() if info.type == "section"]
    section = key.rpartition(".")[0]
    siblings = [k for k in table if k.rpartition(".")[0] == section]
    for pool, cutoff in ((siblings, 0.6), (table, 0.75)):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=cutoff)
        if match:
            return match[0]
    leaf = key.rpartition(".")[2]  # the right name in the wrong section: workers -> rollout.workers
    same_leaf = [k for k in table if k.rpartition(".")[2] == leaf]
    return same_leaf[0] if len(same_leaf) == 1 else None
