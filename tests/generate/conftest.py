"""Shared fixtures for the generation tests: the bundled data and tokenizer, and a tiny random
checkpoint (our save_hf) with the bundled tokenizer's vocabulary."""
from pathlib import Path

import pytest

from ie_engine.engine.model.hf_checkpoint import save_hf

from gen_utils import tiny_model


@pytest.fixture(scope="session")
def bundled(tmp_path_factory) -> dict:
    from ie_engine.data.bundled import ensure_default_assets
    return ensure_default_assets(tmp_path_factory.mktemp("gen-cache"))


@pytest.fixture(scope="session")
def tokenizer(bundled):
    from ie_engine.data.tokenizer import Tokenizer
    return Tokenizer(bundled["tokenizer"])


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, bundled, tokenizer) -> Path:
    """A tiny model for the bundled tokenizer, as a Hugging Face directory with tokenizer.model."""
    path = tmp_path_factory.mktemp("gen-ckpt") / "final"
    save_hf(tiny_model(tokenizer.vocab_size), path, tokenizer_path=bundled["tokenizer"])
    return path
