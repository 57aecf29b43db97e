"""Weight loading: HF folders (safetensors or pytorch_model.bin, with or without the ``transformer.``
prefix), rosetrainer-style ``.pt`` checkpoints, and errors that name the file and the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rosebench.engine import Engine, EngineConfig, KVCacheConfig, SamplingParams, Sequence, WeightsError
from rosebench.engine.config import MODEL_PRESETS, ModelConfig
from rosebench.engine.engine import resolve_device
from rosebench.engine.models import gpt2
from rosebench.engine.weights import build_model, model_config

PROMPT = [15496, 11, 616, 1438, 318, 257]
NEW_TOKENS = 8


def to_rosetrainer(hf_model) -> dict[str, torch.Tensor]:
    """An HF GPT-2's weights under rosetrainer's names: the renaming the HF folder loader does (checked
    against transformers' outputs by the folder tests), cloned so that a test may alter them."""
    c = hf_model.config
    shape = ModelConfig(vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd,
                        n_layer=c.n_layer, n_head=c.n_head)  # fmt: skip
    state = gpt2.hf_state(hf_model.state_dict(), shape, Path("hf_tiny"))
    return {key: tensor.clone() for key, tensor in state.items()}


def rosetrainer_config(hf_model) -> dict:
    c = hf_model.config
    # rosetrainer's own spellings, not HF's: the loader accepts these aliases.
    return {
        "vocab_size": c.vocab_size,
        "max_seq_len": c.n_positions,
        "d_model": c.n_embd,
        "n_layers": c.n_layer,
        "n_heads": c.n_head,
    }


def save_checkpoint(path: Path, state: dict, config: dict) -> Path:
    torch.save({"model": state, "config": config, "step": 123}, path)
    return path


@pytest.fixture(scope="module")
def pt_checkpoint(hf_tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rosetrainer")
    return save_checkpoint(
        folder / "ckpt.pt", to_rosetrainer(hf_tiny_model), rosetrainer_config(hf_tiny_model)
    )


@pytest.fixture(scope="module")
def hf_reference(hf_tiny_model) -> list[int]:
    with torch.no_grad():
        out = hf_tiny_model.generate(
            torch.tensor([PROMPT]),
            attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=hf_tiny_model.config.eos_token_id,
        )
    return out[0, len(PROMPT) :].tolist()


def engine_greedy(weights: Path) -> list[int]:
    engine = Engine(EngineConfig(weights=str(weights), device="cpu", max_num_seqs=1, prepack=False))
    seq = Sequence(0, PROMPT, SamplingParams(max_new_tokens=NEW_TOKENS))
    assert engine.admit(seq)
    engine.prefill([seq])
    while not seq.is_finished:
        engine.decode([seq])
    return seq.output_token_ids


def copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


def assert_same_weights(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


# -- sources that load --------------------------------------------------------------------------------
def test_hf_safetensors_folder_greedy_matches_hf(hf_tiny_dir, hf_reference):
    assert (hf_tiny_dir / "model.safetensors").is_file()
    assert engine_greedy(hf_tiny_dir) == hf_reference


def test_rosetrainer_checkpoint_greedy_matches_hf(pt_checkpoint, hf_tiny_dir, hf_reference):
    assert_same_weights(build_model("gpt2", str(pt_checkpoint), 0), build_model("gpt2", str(hf_tiny_dir), 0))
    assert engine_greedy(pt_checkpoint) == hf_reference


def test_rosetrainer_checkpoint_compiled_prefix_and_tied_head(hf_tiny_model, hf_tiny_dir, tmp_path):
    """torch.compile'd state dicts (``_orig_mod.``) and an explicit lm_head equal to the embedding load."""
    state = {f"_orig_mod.{k}": v for k, v in to_rosetrainer(hf_tiny_model).items()}
    state["_orig_mod.lm_head.weight"] = state["_orig_mod.token_embedding.weight"].clone()
    path = save_checkpoint(tmp_path / "compiled.pt", state, rosetrainer_config(hf_tiny_model))
    assert_same_weights(build_model("gpt2", str(path), 0), build_model("gpt2", str(hf_tiny_dir), 0))


def test_hf_folder_with_pytorch_model_bin(hf_tiny_model, hf_tiny_dir, hf_reference, tmp_path):
    folder = copy_config(hf_tiny_dir, tmp_path / "bin")
    torch.save(hf_tiny_model.state_dict(), folder / "pytorch_model.bin")
    assert not (folder / "model.safetensors").exists()
    assert_same_weights(build_model("gpt2", str(folder), 0), build_model("gpt2", str(hf_tiny_dir), 0))
    assert engine_greedy(folder) == hf_reference


def test_hf_keys_without_transformer_prefix(hf_tiny_model, hf_tiny_dir, hf_reference, tmp_path):
    folder = copy_config(hf_tiny_dir, tmp_path / "bare")
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf_tiny_model.state_dict().items()}
    state.pop("lm_head.weight", None)
    assert not any(k.startswith("transformer.") for k in state)
    save_file(state, str(folder / "model.safetensors"))
    assert_same_weights(build_model("gpt2", str(folder), 0), build_model("gpt2", str(hf_tiny_dir), 0))
    assert engine_greedy(folder) == hf_reference


# -- errors name the file and the key ------------------------------------------------------------------
def test_hf_folder_missing_config_json(hf_tiny_dir, tmp_path):
    folder = tmp_path / "noconfig"
    folder.mkdir()
    shutil.copy(hf_tiny_dir / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(WeightsError, match="config.json") as info:
        build_model("gpt2", str(folder), 0)
    assert str(folder / "config.json") in str(info.value)


def test_hf_config_json_missing_key(hf_tiny_dir, tmp_path):
    folder = copy_config(hf_tiny_dir, tmp_path / "badconfig")
    config = json.loads((folder / "config.json").read_text())
    del config["n_embd"]
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(hf_tiny_dir / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(folder), 0)
    message = str(info.value)
    assert str(folder / "config.json") in message and "n_embd" in message


def test_hf_folder_missing_weights_file(hf_tiny_dir, tmp_path):
    folder = copy_config(hf_tiny_dir, tmp_path / "noweights")
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(folder), 0)
    message = str(info.value)
    assert str(folder) in message
    assert "model.safetensors" in message and "pytorch_model.bin" in message


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(missing), 0)
    assert str(missing) in str(info.value) and "engine.weights" in str(info.value)


def test_hf_shape_mismatch(hf_tiny_model, hf_tiny_dir, tmp_path):
    folder = copy_config(hf_tiny_dir, tmp_path / "shape")
    state = {k: v.clone() for k, v in hf_tiny_model.state_dict().items() if k != "lm_head.weight"}
    key = "transformer.h.1.mlp.c_fc.bias"
    state[key] = state[key][:-1].clone()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(folder), 0)
    message = str(info.value)
    assert str(folder / "model.safetensors") in message
    assert "'blocks.1.mlp.fc1.bias'" in message and "(255,)" in message and "(256,)" in message


def test_hf_unknown_key(hf_tiny_model, hf_tiny_dir, tmp_path):
    folder = copy_config(hf_tiny_dir, tmp_path / "unknown")
    state = {k: v.clone() for k, v in hf_tiny_model.state_dict().items() if k != "lm_head.weight"}
    state["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(folder), 0)
    message = str(info.value)
    assert str(folder / "pytorch_model.bin") in message and "transformer.h.0.attn.rotary.weight" in message


def test_hf_missing_key(hf_tiny_model, hf_tiny_dir, tmp_path):
    folder = copy_config(hf_tiny_dir, tmp_path / "missing")
    state = {k: v.clone() for k, v in hf_tiny_model.state_dict().items() if k != "lm_head.weight"}
    del state["transformer.ln_f.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(folder), 0)
    message = str(info.value)
    assert str(folder / "model.safetensors") in message and "'ln_f.bias'" in message


def test_checkpoint_shape_mismatch(hf_tiny_model, tmp_path):
    state = to_rosetrainer(hf_tiny_model)
    state["blocks.0.attn.qkv_proj.weight"] = state["blocks.0.attn.qkv_proj.weight"].t().contiguous()
    path = save_checkpoint(tmp_path / "shape.pt", state, rosetrainer_config(hf_tiny_model))
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(path), 0)
    message = str(info.value)
    assert str(path) in message and "'blocks.0.attn.qkv_proj.weight'" in message
    assert "(64, 192)" in message and "(192, 64)" in message


def test_checkpoint_unknown_key(hf_tiny_model, tmp_path):
    state = to_rosetrainer(hf_tiny_model)
    state["blocks.0.attn.c_attn.weight"] = state.pop("blocks.0.attn.qkv_proj.weight")  # HF name in a .pt
    path = save_checkpoint(tmp_path / "unknown.pt", state, rosetrainer_config(hf_tiny_model))
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(path), 0)
    message = str(info.value)
    assert str(path) in message and "'blocks.0.attn.c_attn.weight'" in message


def test_checkpoint_missing_key(hf_tiny_model, tmp_path):
    state = to_rosetrainer(hf_tiny_model)
    del state["blocks.1.ln_2.weight"]
    path = save_checkpoint(tmp_path / "missing.pt", state, rosetrainer_config(hf_tiny_model))
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(path), 0)
    message = str(info.value)
    assert str(path) in message and "'blocks.1.ln_2.weight'" in message


def test_checkpoint_config_missing_field(hf_tiny_model, tmp_path):
    config = rosetrainer_config(hf_tiny_model)
    del config["n_heads"]
    path = save_checkpoint(tmp_path / "noheads.pt", to_rosetrainer(hf_tiny_model), config)
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(path), 0)
    message = str(info.value)
    assert str(path) in message and "'n_head'" in message


def test_checkpoint_untied_lm_head(hf_tiny_model, tmp_path):
    state = to_rosetrainer(hf_tiny_model)
    state["lm_head.weight"] = state["token_embedding.weight"] + 1.0
    path = save_checkpoint(tmp_path / "untied.pt", state, rosetrainer_config(hf_tiny_model))
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(path), 0)
    assert str(path) in str(info.value) and "'lm_head.weight'" in str(info.value)


@pytest.mark.parametrize(
    "payload",
    [[1, 2, 3], {"state_dict": {}, "config": {}}, {"model": {}}],
    ids=["list", "no-model-key", "no-config-key"],
)
def test_checkpoint_not_a_rosetrainer_dict(payload, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(path), 0)
    message = str(info.value)
    assert str(path) in message and "'model'" in message and "'config'" in message


def test_checkpoint_not_a_torch_file(tmp_path):
    path = tmp_path / "text.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(path), 0)
    assert str(path) in str(info.value)


class _Payload:
    """Unpickled by an unsafe loader, this creates the file ``marker``: proof that the loader never tries."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


_TORCH_ADVICE = ("weights_only` set to `False`", "weights_only=False", "can still be loaded", "trust", "\x1b")


def test_pickled_object_in_a_checkpoint_is_refused_without_torchs_advice(tmp_path):
    path, marker = tmp_path / "object.pt", tmp_path / "code-ran"
    torch.save({"model": _Payload(marker), "config": {}}, path)
    for read in (lambda: build_model("gpt2", str(path), 0), lambda: model_config("gpt2", str(path))):
        with pytest.raises(WeightsError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"engine.weights={path}: not a readable weights checkpoint (it pickles ")
        assert (
            "open, where only tensors" in message and "weights_only=True" in message and "\n" not in message
        )
        assert not any(advice in message for advice in _TORCH_ADVICE), message
    assert not marker.exists()


def test_pickled_object_in_pytorch_model_bin_is_refused_without_torchs_advice(hf_tiny_dir, tmp_path):
    folder, marker = copy_config(hf_tiny_dir, tmp_path / "object-bin"), tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(folder), 0)
    message = str(info.value)
    assert message.startswith(f"{folder / 'pytorch_model.bin'}: cannot be read as weights (it pickles ")
    assert "open, where only tensors" in message and "weights_only=True" in message
    assert not any(advice in message for advice in _TORCH_ADVICE), message
    assert not marker.exists()


def test_model_config_is_the_shape_build_model_loads(hf_tiny_model, hf_tiny_dir, pt_checkpoint, tmp_path):
    """Read before the weights (to bound the workload's ids), it must agree with what is then loaded,
    for every source: a preset, an HF folder, a checkpoint in torch's zip format and in the legacy one."""
    legacy = tmp_path / "legacy.pt"
    payload = {"model": to_rosetrainer(hf_tiny_model), "config": rosetrainer_config(hf_tiny_model)}
    torch.save(payload, legacy, _use_new_zipfile_serialization=False)
    for preset, weights in [
        ("tiny", None),
        ("gpt2", str(hf_tiny_dir)),
        ("gpt2", str(pt_checkpoint)),
        ("gpt2", str(legacy)),
    ]:
        expected = MODEL_PRESETS[preset] if weights is None else build_model(preset, weights, 0).config
        assert model_config(preset, weights) == expected, weights
    with pytest.raises(WeightsError, match="engine.weights="):
        model_config("gpt2", str(tmp_path / "nowhere.pt"))


# -- config errors ---------------------------------------------------------------------------------
def test_unknown_preset_names_the_key():
    with pytest.raises(ValueError, match=r"engine\.model=gpt5") as info:
        Engine(EngineConfig(model="gpt5", device="cpu"))
    assert "tiny" in str(info.value)  # lists the allowed presets


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_names_the_key():
    with pytest.raises(ValueError, match=r"engine\.device=cuda"):
        Engine(EngineConfig(model="tiny", device="cuda"))
    with pytest.raises(ValueError, match=r"engine\.device=cuda:1"):
        resolve_device("cuda:1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_num_seqs": 0}, r"engine\.max_num_seqs=0: must be >= 1"),
        ({"max_model_len": 0}, r"engine\.max_model_len=0: must be >= 1"),
        ({"max_model_len": 257}, r"engine\.max_model_len=257: must be in \[1, 256\]"),
        ({"kv_cache": {"block_size": 0}}, r"engine\.kv_cache\.block_size=0: must be >= 1"),
        ({"kv_cache": {"num_blocks": 0}}, r"engine\.kv_cache\.num_blocks=0: must be >= 1"),
        ({"kv_cache": {"memory_fraction": 1.5}}, r"engine\.kv_cache\.memory_fraction=1\.5"),
        ({"dtype": "float64"}, r"engine\.dtype=float64: allowed values are float32"),
        ({"attention": "flash"}, r"engine\.attention=flash: allowed values are slot, naive"),
    ],
)
def test_engine_range_checks_name_the_key(changes: dict, message: str):
    with pytest.raises(ValueError, match=message):
        if "kv_cache" in changes:  # the nested config checks itself as it is made
            changes = {**changes, "kv_cache": KVCacheConfig(**changes["kv_cache"])}
        Engine(EngineConfig(model="tiny", device="cpu", **changes))


def test_unknown_device_names_the_key():
    with pytest.raises(ValueError, match=r"engine\.device=tpu: allowed values are auto, cpu, cuda, cuda:N"):
        EngineConfig(model="tiny", device="tpu")
