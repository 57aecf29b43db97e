"""Model families, one file each, behind the interface in ``base``. Adding a family is a new file here, a
line in ``MODEL_CLASSES`` (its ``ModelConfig.architecture``) and its Hugging Face ``model_type`` names in
``HF_FAMILIES``."""

from __future__ import annotations

from types import ModuleType

from rosebench.engine.config import ModelConfig
from rosebench.engine.models import gpt2, llama
from rosebench.engine.models.base import CausalLM

MODEL_CLASSES = {"gpt2": gpt2.GPT2, "llama": llama.Llama}

# A Hugging Face config.json's model_type -> (our architecture, the module whose hf_config and
# hf_state read such a folder).
HF_FAMILIES: dict[str, tuple[str, ModuleType]] = {
    "gpt2": ("gpt2", gpt2),
    "llama": ("llama", llama),
    "mistral": ("llama", llama),
    "qwen2": ("llama", llama),
}


def create_model(cfg: ModelConfig) -> CausalLM:
    """An untrained model of ``cfg``'s family and shape, float32 on the current default device."""
    return MODEL_CLASSES[cfg.architecture](cfg)
