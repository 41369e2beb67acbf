"""Shared test settings: the gpu marker skips cleanly on machines without CUDA, and ``device`` is where
tests of code that runs on the accelerator in production put their tensors (cuda when present, else cpu)."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device under test: cuda when present, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def full_float32(device):
    """On cuda, float32 convolutions and matmuls in full float32 (cuDNN uses TF32 by default) with cuDNN's
    deterministic kernels while the test runs, so float32 results compare as tightly as on the CPU."""
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    cudnn.deterministic, cudnn.benchmark = True, False
    yield
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole test session (train() keeps a Ray it did not start)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
