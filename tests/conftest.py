"""Test-session set-up.

Without CUDA, TRITON_INTERPRET=1 is set before anything imports triton: Triton then builds every
kernel for its interpreter, so tests/kernels can run the real kernels on CPU tensors (they select
that path explicitly, see tests/kernels/conftest.py). Nothing else reads the variable: the public
kernel functions send CPU tensors to their PyTorch references whatever it says
(kernels/_dispatch.py), so every other test, and their subprocesses, run the fast references.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def world1():
    """The 1-process gloo group a plain `python recipe.py` gets (the CPU path, on any host)."""
    from ie_engine.engine.parallel import destroy_distributed, init_distributed
    assert "WORLD_SIZE" not in os.environ
    world = init_distributed(timeout_s=60, device_type="cpu")
    yield world
    destroy_distributed()


@pytest.fixture(scope="module")
def one_thread():
    """For tests of tiny models: one intra-op thread is fastest, and on a shared 2-core machine
    a second OpenMP thread spinning at barriers makes each step ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_sessionfinish(session, exitstatus):
    """Free the process groups and FSDP models of in-process tests while the interpreter is
    still alive: gloo threads torn down during finalisation can abort the process (see
    ie_engine.engine.parallel.exit_process), which would fail a green run."""
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
