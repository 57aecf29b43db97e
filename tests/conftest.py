"""Shared fixtures: a tiny GPT-2 saved by transformers, so the engine is checked against the real thing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256, "vocab_size": 50257}


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """In-process tests use tiny shapes on a shared 2-core machine, where a second intra-op thread only
    contends (measured about 7x slower). CLI subprocesses and benchmarks keep their own settings."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT2LMHeadModel saved with save_pretrained (model.safetensors + config.json).

    Weights are drawn wider than GPT-2's 0.02 init so that greedy continuations vary from token to
    token: with the stock init a tiny random model repeats one token, which would hide ordering bugs.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1234)
    model = GPT2LMHeadModel(GPT2Config(**TINY)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
            elif "ln" not in name:
                param.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_tiny_model(hf_tiny_dir: Path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_tiny_dir).eval()
