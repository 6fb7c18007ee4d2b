"""Fixtures of the engine tests."""
import os

import pytest


@pytest.fixture(scope="module")
def world1():
    """The 1-process gloo group a plain `python recipe.py` gets (the CPU path, on any host)."""
    from ie_engine.engine.parallel import destroy_distributed, init_distributed
    assert "WORLD_SIZE" not in os.environ
    world = init_distributed(timeout_s=60, device_type="cpu")
    yield world
    destroy_distributed()
