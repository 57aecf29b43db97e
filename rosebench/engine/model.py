"""GPT-2 (pre-LN, learned positions, GELU-tanh, tied lm_head) whose attention reads and writes a KV cache.

The model is layout-agnostic: each attention layer hands its new K/V and its queries to a
``KVAttention`` object built once per engine step, which owns where K/V live and how they are read.
It carries no instrumentation: the engine labels its regions, so that a compiled or graph-captured
step holds nothing but the model's own ops.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from rosebench.engine.config import ModelConfig


class KVAttention(Protocol):
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor: ...


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
        self.fc1 = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.fc2 = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

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
        if self.lm_head is not None:
            return self.lm_head(hidden).float()
        return F.linear(hidden, self.token_embedding.weight).float()
