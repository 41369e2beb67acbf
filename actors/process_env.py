"""Environment variables for the worker processes Ray starts."""

from __future__ import annotations

# A worker's output goes to Ray's worker log files (the console too with logging.verbose=true). Progress bars
# there only repeat themselves: transformers' "Writing model shards" at every weight export and checkpoint,
# hub downloads, tqdm loops. Warnings and errors are kept.
QUIET_PROGRESS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def worker_env(num_cpus: float, **extra: str) -> dict[str, str]:
    """What every areal worker sets: local models only, quiet tokenizers and progress bars, threads = its CPUs.

    Thread counts matter on small machines: processes sharing cores with default
    thread pools ran small workloads 5-50x slower (ENVIRONMENT.md).
    """
    return {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **QUIET_PROGRESS,
            "OMP_NUM_THREADS": str(max(1, int(num_cpus))), **extra}
