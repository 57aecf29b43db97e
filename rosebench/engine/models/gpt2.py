"""GPT-2 (pre-LN, learned positions, GELU-tanh, tied lm_head), and how a Hugging Face GPT-2 folder maps
onto it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rosebench.engine.config import ModelConfig
from rosebench.engine.models.base import KVAttention, WeightsError, tied_or_own_head


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.out_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor, kv: KVAttention) -> torch.Tensor:
        batch, seq_len, width = x.shape
        qkv = self.qkv_proj(x).view(batch, seq_len, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, D]
        kv.write(self.layer, k, v)
        out = kv.attend(self.layer, q)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq_len, width))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, kv: KVAttention) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.position_embedding = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        # None = the lm_head is the token embedding, tied; set when the weights are prepacked for the CPU.
        self.lm_head: nn.Module | None = None

    def init_weights(self, generator: torch.Generator) -> None:
        """GPT-2's init (normal 0.02, residual projections scaled by 1/sqrt(2 * n_layer)), seeded."""
        residual_std = 0.02 / (2 * self.config.n_layer) ** 0.5
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif ".ln_" in name or name.startswith("ln_f"):
                nn.init.ones_(param)
            else:
                std = residual_std if name.endswith(("out_proj.weight", "fc2.weight")) else 0.02
                with torch.no_grad():
                    param.normal_(0.0, std, generator=generator)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: KVAttention) -> torch.Tensor:
        """Hidden states after the final layer norm, ``[B, T, n_embd]``."""
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, kv)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied lm_head, computed only for the rows that are sampled."""
        return tied_or_own_head(self, hidden)


# -- a Hugging Face GPT-2 folder ------------------------------------------------------------------------
# GPT2LMHeadModel names -> ours. Conv1D weights are stored [in, out]; ours are [out, in].
_HF_LAYER_KEYS = {
    "ln_1.weight": "ln_1.weight",
    "ln_1.bias": "ln_1.bias",
    "attn.c_attn.weight": "attn.qkv_proj.weight",
    "attn.c_attn.bias": "attn.qkv_proj.bias",
    "attn.c_proj.weight": "attn.out_proj.weight",
    "attn.c_proj.bias": "attn.out_proj.bias",
    "ln_2.weight": "ln_2.weight",
    "ln_2.bias": "ln_2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_TOP_KEYS = {
    "wte.weight": "token_embedding.weight",
    "wpe.weight": "position_embedding.weight",
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
}
_HF_BUFFERS = ("attn.bias", "attn.masked_bias")
_HF_SHAPE_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


def hf_config(hf: dict, config_file: Path) -> dict[str, object]:
    """``ModelConfig`` values from a GPT-2 ``config.json`` (checked for type by the caller)."""
    for key in _HF_SHAPE_KEYS:
        if key not in hf:
            raise WeightsError(f"{config_file}: missing key '{key}'")
    values: dict[str, object] = {key: hf[key] for key in _HF_SHAPE_KEYS}
    values["layer_norm_eps"] = hf.get("layer_norm_epsilon", 1e-5)
    return values


def hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> dict[str, torch.Tensor]:
    """A ``GPT2LMHeadModel`` state_dict renamed (and its Conv1D weights transposed) to ours."""
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        parts = name.split(".", 2)
        if name == "lm_head.weight" or (len(parts) == 3 and parts[2] in _HF_BUFFERS):
            continue  # lm_head is tied to wte; attn.bias/masked_bias are causal-mask buffers
        if name in _HF_TOP_KEYS:
            ours[_HF_TOP_KEYS[name]] = tensor
            continue
        if len(parts) == 3 and parts[0] == "h" and parts[1].isdigit() and parts[2] in _HF_LAYER_KEYS:
            ours[f"blocks.{parts[1]}.{_HF_LAYER_KEYS[parts[2]]}"] = (
                tensor.t() if parts[2] in _HF_CONV1D else tensor
            )
            continue
        raise WeightsError(f"{source}: unknown key {key!r}")
    return ours
