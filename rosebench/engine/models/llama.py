"""The Llama family (Llama, Mistral, Qwen2, SmolLM2): rotary positions, RMSNorm, grouped-query attention,
a gated SiLU MLP; optional q/k/v biases (Qwen2) and an untied output head. And how a Hugging Face folder
of ``model_type`` llama, mistral or qwen2 maps onto it.

Q, K and V are one matmul (``qkv_proj``), as are the MLP's gate and up projections (``gate_up_proj``):
decode multiplies a few rows by each weight, so one call instead of three (two) saves launches and reads
the activations once; the Hugging Face weights are concatenated at load time.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rosebench.engine.config import ModelConfig, RopeScaling
from rosebench.engine.models.base import KVAttention, WeightsError, check_state, tied_or_own_head


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's rotation angles, ``[n_positions, head_dim]`` each (float32), in the
    half-split layout Hugging Face's Llama uses: dimension ``i`` pairs with ``i + head_dim / 2``."""
    dim = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    if cfg.rope_scaling is not None:
        inv_freq = _llama3_scaled(inv_freq, cfg.rope_scaling)
    angles = torch.outer(torch.arange(cfg.n_positions).float(), inv_freq)  # [P, D/2]
    angles = torch.cat((angles, angles), dim=-1)  # [P, D]
    return angles.cos(), angles.sin()


def _llama3_scaled(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama 3.1's RoPE scaling: wavelengths longer than the original context / ``low_freq_factor`` are
    stretched by ``factor``, those shorter than the context / ``high_freq_factor`` kept, and the band
    between blended linearly in context / wavelength."""
    context = scaling.original_max_position_embeddings
    wavelength = 2 * math.pi / inv_freq
    stretched = torch.where(
        wavelength > context / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq
    )
    blend = (context / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - blend) * stretched / scaling.factor + blend * stretched
    in_band = (wavelength >= context / scaling.high_freq_factor) & (
        wavelength <= context / scaling.low_freq_factor
    )
    return torch.where(in_band, blended, stretched)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to ``x`` ``[B, H, T, D]``; ``cos``/``sin`` ``[B, 1, T, D]`` (the rows' positions)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 and rounded back before the scale, as the reference does: bf16 and fp16
        # then round where it rounds.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.num_kv_heads, cfg.head_dim
        width = (cfg.n_head + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.n_embd, width, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.out_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: KVAttention) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, seq_len, -1, self.head_dim).transpose(1, 2)  # [B, H + 2 Hkv, T, D]
        q, k, v = qkv.split((self.n_head, self.n_kv_head, self.n_kv_head), dim=1)
        # K/V heads only: the cache is n_head / n_kv_head times smaller than the query heads would make it.
        kv.write(self.layer, rotate(k, cos, sin), v)
        out = kv.attend(self.layer, rotate(q, cos, sin))  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.n_embd, 2 * cfg.mlp_width, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.layer_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: KVAttention) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, kv)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.layer_norm_eps)
        self.lm_head: nn.Module | None = (
            None if cfg.tie_word_embeddings else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        )
        # Computed once; not weights (absent from state_dicts), but cast with the model like them.
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # [n_positions, head_dim]
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, generator: torch.Generator) -> None:
        """Hugging Face's Llama init (normal 0.02 for matrices, norms 1, biases 0), seeded."""
        for name, param in self.named_parameters():
            with torch.no_grad():
                if param.dim() > 1:
                    param.normal_(0.0, 0.02, generator=generator)
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    param.fill_(1.0)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: KVAttention) -> torch.Tensor:
        """Hidden states after the final norm, ``[B, T, n_embd]``."""
        cos = self.rope_cos[positions].unsqueeze(1)  # [B, 1, T, D], shared by every layer
        sin = self.rope_sin[positions].unsqueeze(1)
        x = self.token_embedding(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin, kv)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return tied_or_own_head(self, hidden)


# -- a Hugging Face folder (model_type llama, mistral or qwen2) -------------------------------------------
_REQUIRED = {
    "vocab_size": "vocab_size",
    "max_position_embeddings": "n_positions",
    "hidden_size": "n_embd",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "intermediate_size": "intermediate_size",
}
_ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def hf_config(hf: dict, config_file: Path) -> dict[str, object]:
    """``ModelConfig`` values from a Llama, Mistral or Qwen2 ``config.json`` (types checked by the caller);
    what this engine does not implement (a sliding window, another RoPE scaling) is refused by name."""
    model_type = hf["model_type"]
    for key in _REQUIRED:
        if key not in hf:
            raise WeightsError(f"{config_file}: missing key '{key}'")
    values: dict[str, object] = {ours: hf[key] for key, ours in _REQUIRED.items()}
    if hf.get("hidden_act", "silu") != "silu":
        raise WeightsError(f"{config_file}: hidden_act={hf['hidden_act']!r} is not supported (allowed: silu)")
    _refuse_sliding_window(hf, config_file)
    if hf.get("num_key_value_heads") is not None:
        values["n_kv_head"] = hf["num_key_value_heads"]
    if hf.get("head_dim") is not None:
        values["head_size"] = hf["head_dim"]
    values["layer_norm_eps"] = hf.get("rms_norm_eps", 1e-6)
    values["rope_theta"], values["rope_scaling"] = _rope(hf, config_file)
    values["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings", False))
    if model_type == "qwen2":  # Qwen2 always has q/k/v biases, never an output one
        values["qkv_bias"], values["out_bias"] = True, False
    else:  # Llama's attention_bias covers q, k, v and o; Mistral has none
        values["qkv_bias"] = values["out_bias"] = bool(hf.get("attention_bias", False))
    values["mlp_bias"] = bool(hf.get("mlp_bias", False))
    values["eos_token_ids"] = eos_ids(hf.get("eos_token_id"), config_file)
    return values


def eos_ids(value: object, config_file: Path) -> tuple[int, ...]:
    """``eos_token_id`` as a tuple: one id, a list of them (Llama 3 instruct), or none."""
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise WeightsError(f"{config_file}: 'eos_token_id' must be an id or a list of ids, got {value!r}")
    return tuple(ids)


def _refuse_sliding_window(hf: dict, config_file: Path) -> None:
    """Only full attention is implemented: a window shorter than the context would change the outputs."""
    window = hf.get("sliding_window")
    used = hf.get("use_sliding_window", True)  # Qwen2 names whether its window applies
    if used and window is not None and window < hf["max_position_embeddings"]:
        raise WeightsError(
            f"{config_file}: sliding_window={window} is not supported (rosebench attends to the whole "
            f"context; allowed: null, or at least max_position_embeddings={hf['max_position_embeddings']})"
        )


def _rope(hf: dict, config_file: Path) -> tuple[float, RopeScaling | None]:
    """RoPE's base and scaling, from ``rope_parameters`` (transformers 5) or ``rope_theta`` and
    ``rope_scaling`` (earlier folders)."""
    params = hf.get("rope_parameters") or {
        **(hf.get("rope_scaling") or {}),
        "rope_theta": hf.get("rope_theta"),
    }
    theta = params.get("rope_theta")
    theta = 10000.0 if theta is None else theta
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise WeightsError(f"{config_file}: 'rope_theta' must be a number > 0, got {theta!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise WeightsError(
            f"{config_file}: RoPE scaling rope_type={rope_type!r} is not supported (allowed: "
            f"{', '.join(_ROPE_TYPES)}, or no rope_scaling)"
        )
    if rope_type == "default":
        return float(theta), None
    missing = [key for key in _LLAMA3_KEYS if not isinstance(params.get(key), (int, float))]
    if missing:
        raise WeightsError(
            f"{config_file}: RoPE scaling rope_type='llama3' needs a number for '{missing[0]}'"
        )
    return float(theta), RopeScaling(**{key: params[key] for key in _LLAMA3_KEYS})


_FUSED = {  # ours <- Hugging Face's, concatenated in this order along the output dimension
    "attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
_RENAMED = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "self_attn.o_proj.bias": "attn.o_proj.bias",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "mlp.down_proj.bias": "mlp.down_proj.bias",
}


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key a Hugging Face state_dict of ``cfg`` holds, with its shape (``lm_head`` when untied)."""
    e, d, i = cfg.n_embd, cfg.head_dim, cfg.mlp_width
    q, kv = cfg.n_head * d, cfg.num_kv_heads * d
    layer = {
        "input_layernorm.weight": (e,),
        "post_attention_layernorm.weight": (e,),
        "self_attn.q_proj.weight": (q, e),
        "self_attn.k_proj.weight": (kv, e),
        "self_attn.v_proj.weight": (kv, e),
        "self_attn.o_proj.weight": (e, q),
        "mlp.gate_proj.weight": (i, e),
        "mlp.up_proj.weight": (i, e),
        "mlp.down_proj.weight": (e, i),
    }
    if cfg.qkv_bias:
        layer |= {
            "self_attn.q_proj.bias": (q,),
            "self_attn.k_proj.bias": (kv,),
            "self_attn.v_proj.bias": (kv,),
        }
    if cfg.out_bias:
        layer["self_attn.o_proj.bias"] = (e,)
    if cfg.mlp_bias:
        layer |= {"mlp.gate_proj.bias": (i,), "mlp.up_proj.bias": (i,), "mlp.down_proj.bias": (e,)}
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, e), "model.norm.weight": (e,)}
    for n in range(cfg.n_layer):
        shapes |= {f"model.layers.{n}.{key}": shape for key, shape in layer.items()}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, e)
    return shapes


def hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> dict[str, torch.Tensor]:
    """A ``LlamaForCausalLM`` (or Mistral's, Qwen2's) state_dict, checked key by key under its own names,
    then renamed and fused to ours."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}  # older folders
    if cfg.tie_word_embeddings and "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        if not torch.equal(head, state.get("model.embed_tokens.weight", head)):
            raise WeightsError(
                f"{source}: key 'lm_head.weight' differs from 'model.embed_tokens.weight' "
                "while config.json says tie_word_embeddings=true"
            )
    check_state(state, _hf_shapes(cfg), source)
    ours = {
        "token_embedding.weight": state["model.embed_tokens.weight"],
        "norm.weight": state["model.norm.weight"],
    }
    if not cfg.tie_word_embeddings:
        ours["lm_head.weight"] = state["lm_head.weight"]
    for n in range(cfg.n_layer):
        prefix = f"model.layers.{n}."
        for hf_key, key in _RENAMED.items():
            if prefix + hf_key in state:
                ours[f"blocks.{n}.{key}"] = state[prefix + hf_key]
        for key, parts in _FUSED.items():
            for kind in ("weight", "bias"):
                tensors = [state.get(f"{prefix}{part}.{kind}") for part in parts]
                if tensors[0] is not None:
                    ours[f"blocks.{n}.{key}.{kind}"] = torch.cat(tensors)
    return ours
