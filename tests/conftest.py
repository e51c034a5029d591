"""Shared fixtures: offline hub, seeded RNGs, a tiny Llama built once and deep-copied per test."""

import copy
import functools
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from bench.models import TinySpec, load_model


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@functools.cache
def _tiny(seed: int = 0):
    return load_model("tiny:llama", seed=seed, tiny=TinySpec())


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: the tiny model is overhead-bound, so one thread is ~2x faster on a
    shared 2-core box (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_lm():
    """(model, tokenizer): random 2-layer d=64 Llama with the SmolLM2 tokenizer; safe to mutate."""
    model, tok = _tiny()
    return copy.deepcopy(model), tok


@functools.cache
def _smollm():
    return load_model("embedded:smollm2-135m-instruct")


@pytest.fixture
def smollm():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct (shared; do not mutate)."""
    return _smollm()


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke suite run once per session into a fresh folder (tests may rerun stages in it)."""
    from bench.cli import main

    out = tmp_path_factory.mktemp("smoke")
    assert main(["run", "suite", "smoke", "--out", str(out), "--device", "cpu"]) == 0
    return out
