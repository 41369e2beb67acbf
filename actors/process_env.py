"""Environment variables for the worker processes Ray starts."""

from __future__ import annotations


def worker_env(num_cpus: float, **extra: str) -> dict[str, str]:
    """What every areal worker sets: local models only, quiet tokenizers, threads = its CPUs.

    Thread counts matter on small machines: processes sharing cores with default
    thread pools ran small workloads 5-50x slower (ENVIRONMENT.md).
    """
    return {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(max(1, int(num_cpus))), **extra}
