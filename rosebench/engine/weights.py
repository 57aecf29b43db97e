"""Where a model's weights come from: a seeded random init, a Hugging Face folder (GPT-2, Llama, Mistral or
Qwen2, by its config.json's ``model_type``), or a rosetrainer-style GPT-2 ``.pt`` checkpoint. Every failure
names the file and the key."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from rosebench.engine.config import MODEL_PRESETS, EngineConfig, ModelConfig, model_source
from rosebench.engine.models import HF_FAMILIES, create_model
from rosebench.engine.models.base import CausalLM, WeightsError, check_state
from rosebench.engine.tokenizer import Tokenizer, model_tokenizer

__all__ = ["WeightsError", "build_model", "model_and_tokenizer", "model_config"]

# Aliases accepted in a rosetrainer checkpoint's "config".
_CONFIG_ALIASES = {
    "vocab_size": ("vocab_size",),
    "n_positions": ("n_positions", "max_seq_len", "block_size", "context_length", "n_ctx"),
    "n_embd": ("n_embd", "d_model", "hidden_size"),
    "n_layer": ("n_layer", "n_layers", "num_layers"),
    "n_head": ("n_head", "n_heads", "num_heads"),
    "layer_norm_eps": ("layer_norm_eps", "layer_norm_epsilon", "ln_eps"),
}


def build_model(preset: str, weights: str | None, seed: int) -> CausalLM:
    """The model in float32 on the CPU; the caller moves it to its device and dtype."""
    if weights is None:
        model = create_model(MODEL_PRESETS[preset])
        model.init_weights(torch.Generator().manual_seed(seed))
        return model
    path = _weights_path(weights)
    return load_hf_folder(path) if path.is_dir() else load_checkpoint(path)


def model_config(preset: str, weights: str | None) -> ModelConfig:
    """The shape ``build_model`` builds (its ``vocab_size`` above all), read without loading the weights
    where the source allows: a preset, an HF folder's config.json, a checkpoint's "config" (memory-mapped,
    so its tensors are not read). A source that cannot be read fails here with ``build_model``'s message."""
    if weights is None:
        return MODEL_PRESETS[preset]
    path = _weights_path(weights)
    if path.is_dir():
        return _hf_config(path / "config.json")
    return _checkpoint_config(path, _read_checkpoint(path, mmap=zipfile.is_zipfile(path)))


def model_and_tokenizer(engine: EngineConfig) -> tuple[ModelConfig, Tokenizer]:
    """The model's shape (read without its weights) and the tokenizer its prompts and outputs go through:
    the one choice the runner, ``rosebench.serve`` and ``target=serve`` share, so that a server never
    decodes with another vocabulary than the run in-process. Generation stops at the model's own EOS ids
    (``ModelConfig.eos_token_ids``, the engine's default), never the tokenizer's."""
    shape = model_config(engine.model, engine.weights)
    return shape, model_tokenizer(shape, engine.weights, model_source(engine))


def _weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir() or (path.suffix == ".pt" and path.is_file()):
        return path
    raise WeightsError(
        f"engine.weights={weights}: not found or not a weights source "
        "(allowed: a Hugging Face folder of GPT-2, Llama, Mistral or Qwen2, or a GPT-2 .pt checkpoint file)"
    )


def _hf_config(config_file: Path) -> ModelConfig:
    if not config_file.is_file():
        raise WeightsError(f"{config_file}: missing (a Hugging Face model folder needs config.json)")
    try:
        hf = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{config_file}: not a JSON file ({_one_line(err)})") from None
    if not isinstance(hf, dict):
        raise WeightsError(f"{config_file}: expected a JSON object")
    model_type = hf.setdefault("model_type", "gpt2")  # GPT-2 folders were accepted without one
    if not isinstance(model_type, str) or model_type not in HF_FAMILIES:
        raise WeightsError(
            f"{config_file}: model_type={model_type!r} is not supported (allowed: {', '.join(HF_FAMILIES)})"
        )
    architecture, family = HF_FAMILIES[model_type]
    return _model_config(config_file, {"architecture": architecture, **family.hf_config(hf, config_file)})


def load_hf_folder(folder: Path) -> CausalLM:
    cfg = _hf_config(folder / "config.json")
    weights_file, state = _read_hf_state(folder)
    family = HF_FAMILIES[cfg.architecture][1]
    return _load_state(create_model(cfg), family.hf_state(state, cfg, weights_file), weights_file)


def load_checkpoint(path: Path) -> CausalLM:
    payload = _read_checkpoint(path)
    cfg = _checkpoint_config(path, payload)
    state = {k.removeprefix("_orig_mod."): v for k, v in payload["model"].items()}
    head = state.pop("lm_head.weight", None)
    if (
        head is not None
        and "token_embedding.weight" in state
        and not torch.equal(head, state["token_embedding.weight"])
    ):
        raise WeightsError(
            f"{path}: key 'lm_head.weight' differs from 'token_embedding.weight' (lm_head is tied)"
        )
    return _load_state(create_model(cfg), state, path)


def _read_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A rosetrainer checkpoint's payload, checked for its shape:
    ``{"model": state_dict, "config": dict}``."""
    try:
        payload = _torch_load(path, mmap)
    except _UnsafeOrUnreadable as err:
        raise WeightsError(
            f"engine.weights={path}: not a readable weights checkpoint ({err}; {_SAFE_LOAD}; allowed: a .pt "
            'file of {"model": state_dict, "config": {...}}, or a Hugging Face model folder)'
        ) from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise WeightsError(f"{path}: expected a dict with keys 'model' (state_dict) and 'config'")
    if not isinstance(payload["model"], dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["model"].items()
    ):
        raise WeightsError(f"{path}: key 'model' must be a state_dict (parameter name -> tensor)")
    if not isinstance(payload["config"], dict):
        raise WeightsError(f"{path}: key 'config' must be a dict of model settings")
    return payload


def _checkpoint_config(path: Path, payload: dict) -> ModelConfig:
    raw = payload["config"]
    values = {}
    for field_name, aliases in _CONFIG_ALIASES.items():
        found = next((raw[a] for a in aliases if a in raw), None)
        if found is None and field_name != "layer_norm_eps":
            raise WeightsError(f"{path}: config lacks {field_name!r} (any of {', '.join(aliases)})")
        if found is not None:
            values[field_name] = found
    return _model_config(path, values)


_SAFE_LOAD = (
    "rosebench loads checkpoints with torch.load(weights_only=True) for safety, so a file's code never runs"
)


class _UnsafeOrUnreadable(Exception):
    """torch.load(weights_only=True) refused a file; the message says why, without torch's advice."""


def _torch_load(path: Path, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)``. A file it refuses raises ``_UnsafeOrUnreadable`` with a short
    reason. Torch's own message is not passed on: it advises retrying with ``weights_only=False``, which
    runs whatever code the file holds, advice a benchmark must not give about a file it did not make."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # what weights_only=True raises for anything but tensors
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        reason = (
            f"it pickles {found.group(1)}, where only tensors and plain containers are allowed"
            if found
            else "not a torch save file"
        )
        raise _UnsafeOrUnreadable(reason) from None
    except Exception as err:  # a damaged archive, a truncated file, ...
        text = _one_line(err)
        raise _UnsafeOrUnreadable(
            "not a torch save file" if "weights_only" in text else f"not a torch save file: {text}"
        ) from None


def _read_hf_state(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        source, read = safetensors_file, lambda: load_file(str(safetensors_file))
    elif bin_file.is_file():
        source, read = bin_file, lambda: _torch_load(bin_file)
    else:
        raise WeightsError(f"{folder}: no model.safetensors or pytorch_model.bin")
    try:
        state = read()
    except _UnsafeOrUnreadable as err:
        raise WeightsError(f"{source}: cannot be read as weights ({err}; {_SAFE_LOAD})") from None
    except Exception as err:  # truncated, corrupt or not a weights file at all
        raise WeightsError(f"{source}: cannot be read as weights ({_one_line(err)})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{source}: expected a state_dict (parameter name -> tensor)")
    return source, state


_BOOLEANS = ("qkv_bias", "out_bias", "mlp_bias", "tie_word_embeddings")
_NUMBERS = ("layer_norm_eps", "rope_theta")
_PASSED_ON = ("architecture", "rope_scaling", "eos_token_ids")  # made and checked by the family's hf_config


def _model_config(source: Path, values: dict) -> ModelConfig:
    """The model shape from a weights source's settings, each checked for its type."""
    for key, value in values.items():
        if key in _PASSED_ON or key in _BOOLEANS:
            continue
        if key in _NUMBERS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise WeightsError(f"{source}: '{key}' must be a number > 0, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WeightsError(f"{source}: '{key}' must be an integer >= 1, got {value!r}")
    try:
        return ModelConfig(**values)
    except ValueError as err:
        raise WeightsError(f"{source}: {err}") from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else f"{text[:200]} ..."


def _load_state(model: CausalLM, state: dict[str, torch.Tensor], source: Path) -> CausalLM:
    check_state(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, source)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model
