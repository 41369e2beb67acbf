"""Environment variables for the worker processes Ray starts."""

from __future__ import annotations

import os

# A worker's output goes to Ray's worker log files (the console too with logging.verbose=true). Progress bars
# there only repeat themselves: transformers' "Writing model shards" at every weight export and checkpoint,
# hub downloads, tqdm loops. Warnings and errors are kept.
QUIET_PROGRESS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


# OpenMP threads that finish a parallel region spin for a while before sleeping (libgomp's default). With the
# engine, the learner and the driver sharing a few cores, that spinning takes the cores the others need: sleeping
# at once made the CPU demo's step 12% faster (0.626 -> 0.554 s, docs/performance.md). A user's own setting wins.
PASSIVE_WAIT = {} if "OMP_WAIT_POLICY" in os.environ else {"OMP_WAIT_POLICY": "PASSIVE"}


def worker_env(num_cpus: float, **extra: str) -> dict[str, str]:
    """What every areal worker sets: local models only, quiet tokenizers and progress bars, threads = its CPUs.

    Thread counts matter on small machines: processes sharing cores with default
    thread pools ran small workloads 5-50x slower (ENVIRONMENT.md).
    """
    return {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **QUIET_PROGRESS,
            "OMP_NUM_THREADS": str(max(1, int(num_cpus))), **PASSIVE_WAIT, **extra}
