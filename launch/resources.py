"""What a run asks of the machine or cluster, checked before Ray starts.

Without these checks a run on a machine without GPUs that asks for one waits ``learner.start_timeout_s`` (15
minutes) for a placement that can never happen, then fails without naming GPUs; a cluster address that does
not answer costs most of a minute of Ray's own retries.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from areal.config import TrainConfig

PROBE_TIMEOUT_S = 3.0
RAY_CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # where `ray start --head` records its address


def gpus_asked(cfg: TrainConfig) -> float:
    """GPUs the learners and the most rollout workers the balancer may run reserve together."""
    return cfg.learner.workers * cfg.learner.num_gpus + cfg.rollout.worker_budget[1] * cfg.rollout.num_gpus


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_resources(cfg: TrainConfig) -> None:
    """GPUs against this machine's (embedded Ray), and the cluster's address against what answers there."""
    if cfg.cluster.address:
        probe_cluster(cfg.cluster.address)
        return
    asked, present = gpus_asked(cfg), None
    if asked > 0 or cfg.rollout.weight_transport == "native":
        present = local_gpus()
    if asked > (present or 0):
        r, lr = cfg.rollout, cfg.learner
        raise ValueError(f"config error: learner.num_gpus={lr.num_gpus:g} x {lr.workers} learner(s) + rollout.num_gpus="
                         f"{r.num_gpus:g} x {r.worker_budget[1]} rollout worker(s) ask for {asked:g} GPUs, but this "
                         f"machine has {present or 0}: set them to 0 here, or give cluster.address of a Ray cluster "
                         "with GPUs")
    if cfg.rollout.weight_transport == "native" and not present:
        raise ValueError("config error: rollout.weight_transport = 'native' moves weights between GPUs (NCCL), and "
                         "this machine has none: use auto or buckets")


def cluster_endpoint(address: str) -> tuple[str, int, str]:
    """(host, port, where it came from) of a ``cluster.address``: host:port, ray://host:port, or auto ($RAY_ADDRESS,
    else the cluster `ray start --head` started on this node)."""
    given, source = address, f"cluster.address={address}"
    if address == "auto":
        if os.environ.get("RAY_ADDRESS", "auto") != "auto":
            address, source = os.environ["RAY_ADDRESS"], f"cluster.address=auto ($RAY_ADDRESS={os.environ['RAY_ADDRESS']})"
        elif RAY_CURRENT_CLUSTER.is_file():
            address = RAY_CURRENT_CLUSTER.read_text().strip()
            source = f"cluster.address=auto ({RAY_CURRENT_CLUSTER}: {address})"
        else:
            raise ValueError("config error: cluster.address=auto, but no Ray cluster runs on this node ($RAY_ADDRESS "
                             f"is unset, no {RAY_CURRENT_CLUSTER}): start one with `ray start --head`, give its "
                             "address, or leave cluster.address empty for an embedded Ray")
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"config error: {source}: expected HOST:PORT (the head's GCS port, 6379 by default), "
                         f"ray://HOST:PORT or auto, got {given!r}")
    return host.strip("[]"), int(port), source


def probe_cluster(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Something accepts connections at the cluster's address within ``timeout_s``."""
    host, port, source = cluster_endpoint(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        why = f"no answer in {timeout_s:g}s" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ValueError(f"config error: {source}: nothing answers at {host}:{port} ({why}); start Ray there (`ray "
                         "start --head`), check the address and port, or leave cluster.address empty for an embedded "
                         "Ray") from None
