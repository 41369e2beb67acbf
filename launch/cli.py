"""The `areal` command line."""

from __future__ import annotations

import argparse
import logging
import sys

TRAIN_HELP = """Run asynchronous RL locally on an embedded Ray (or on cluster.address).

Arguments are Hydra overrides of the typed config (areal/config), for example:
  areal train experiment=arith_tiny rollout.workers=2 algo.max_staleness=4
  areal train experiment=arith_tiny algo.max_staleness=0      # synchronous baseline
  areal train experiment=ddpo_tiny                             # diffusion: async DDPO, JPEG compressibility
Outputs go to out_dir (metrics.jsonl, tensorboard/, wandb/, checkpoints/, summary.json).
"""


def cmd_train(args) -> int:
    from launch.config_loader import ConfigError, load_config
    from launch.train import train

    try:
        cfg, resolved = load_config(args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(resolved)
    summary = train(cfg, resolved)
    first, last = summary["initial_eval"], summary["final_eval"]
    print(f"\nheld-out {summary['eval_metric'].split('/')[-1]}: {first:.3f} -> {last:.3f} ({last - first:+.3f}) after "
          f"{summary['steps']} steps in {summary['seconds']:.0f}s; checkpoint: {summary['checkpoint']}")
    return 0


def cmd_bootstrap(args) -> int:
    from launch.train import demo_model

    path = demo_model(args.seed, args.out)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="areal",
                                     description="Fully asynchronous RL for reasoning LLMs and diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run an RL job", description=TRAIN_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("overrides", nargs="*", help="key=value config overrides")
    train.set_defaults(func=cmd_train)
    boot = sub.add_parser("bootstrap", help="build (or reuse) the tiny demo model and print its path")
    boot.add_argument("--out", default="", help="model directory (default: the shared cache)")
    boot.add_argument("--seed", type=int, default=0)
    boot.set_defaults(func=cmd_bootstrap)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
