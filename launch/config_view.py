"""`areal config [overrides]`: the resolved config of a run without running it, and `--keys PREFIX`: the keys
with their types, defaults and documentation (the docstrings of the schema in areal/config)."""

from __future__ import annotations

import sys
import textwrap

from areal.config.keys import config_keys, known, nearest


def key_lines(prefix: str, cfg=None) -> list[str]:
    """Every key under ``prefix`` ("" = all): ``key: type = default``, the value ``cfg`` gives it when it differs,
    then its documentation, indented."""
    from areal.config.applicability import value_at

    lines = []
    for key, info in config_keys().items():
        if prefix and key != prefix and not key.startswith(prefix + "."):
            continue
        if info.type == "section":
            lines.append(f"{key}:  (section) {info.doc.splitlines()[0] if info.doc else ''}".rstrip())
            continue
        head = f"{key}: {info.type} = {info.default!r}"
        if cfg is not None:
            value = value_at(cfg, key)
            if value != info.default:
                head += f"  (here: {value!r})"
        lines.append(head)
        doc = " ".join(info.doc.split())
        lines.extend(textwrap.wrap(doc, width=112, initial_indent="    ", subsequent_indent="    "))
    return lines


def cmd_config(args) -> int:
    from launch.preflight import ConfigError, check_local, validate

    if args.keys is not None and args.keys and not known(args.keys):
        guess = nearest(args.keys)
        print(f"areal config: no key or section {args.keys}" + (f"; did you mean {guess}?" if guess else "") +
              " (`areal config --keys` lists them all)", file=sys.stderr)
        return 2
    try:
        cfg, resolved = validate(args.overrides, local=False)
        if args.check:
            check_local(cfg)
    except ConfigError as exc:
        print(f"areal config: {exc}", file=sys.stderr)
        return 2
    if args.keys is not None:
        print("\n".join(key_lines(args.keys, cfg)))
    else:
        print(resolved, end="")
    return 0


HELP = """Print the config a run would use, composed and checked as `areal train` does (without starting anything):
  areal config experiment=arith_tiny               # the resolved YAML
  areal config --keys algo                         # the algo.* keys: type, default, what each does
  areal config --keys rollout experiment=ci_tiny   # ... and the values this config gives them
  areal config --check experiment=ci_tiny out_dir=runs/x   # also the files, out_dir and GPUs, as a run would
`areal train --cfg job OVERRIDES` prints the same YAML.
"""


def add_config_parser(sub) -> None:
    import argparse

    parser = sub.add_parser("config", help="print the resolved config, or list the keys with their docs",
                            description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, as for `areal train`")
    parser.add_argument("--keys", nargs="?", const="", default=None, metavar="PREFIX",
                        help="list the keys under PREFIX (e.g. algo, rollout.workers; none: all) with type, default "
                             "and documentation")
    parser.add_argument("--check", action="store_true",
                        help="also check what a run here would need: model and dataset files, out_dir, GPUs, "
                             "the cluster's address")
    parser.set_defaults(func=cmd_config)
