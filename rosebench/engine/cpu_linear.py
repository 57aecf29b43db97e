"""oneDNN-prepacked linear layers for CPU inference.

Decode multiplies a few rows by every weight matrix, and MKL's plain sgemm is slow at that shape:
measured here (2 vCPU, float32), a [16, 768] x [768, 3072] product takes 2.9 ms unpacked and 0.8 ms
with the weight reordered once into oneDNN's blocked layout, 4.5 vs 2.7 ms at 64 rows. This is the
same op PyTorch's own inductor emits for frozen CPU linears.

bfloat16 is prepacked too where the CPU has bf16 matrix units (AMX, AVX-512 BF16): oneDNN then
multiplies bf16 natively. Elsewhere oneDNN refuses bf16 weights (on AVX2: "bf16 path needs the cpu support
avx_ne_convert or avx512bw, avx512vl and avx512dq"), and the plain bf16 matmul it falls back to converts
to float32 on the fly, slower than float32 itself.
"""

from __future__ import annotations

import itertools
import weakref

import torch
from torch import nn

from rosebench.engine.models.base import CausalLM

# The CPU flags (as /proc/cpuinfo and torch.cpu.get_capabilities() name them) of instructions that
# multiply bf16 matrices natively: AMX tiles (Intel Sapphire Rapids on) and AVX-512 BF16 dot products
# (Intel Cooper Lake, AMD Zen 4 on).
BF16_MATRIX_UNITS = ("amx_bf16", "avx512_bf16")


def bf16_matrix_units() -> list[str]:
    """Which of BF16_MATRIX_UNITS this CPU has; empty where bf16 matmuls run slower than float32."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # public; absent from older torch
    if get_capabilities is not None:
        capabilities = get_capabilities()
        return [unit for unit in BF16_MATRIX_UNITS if capabilities.get(unit, False)]
    # Older torch: its private checks (amx_tile stands for amx_bf16: every AMX CPU so far has both).
    checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return [unit for unit, check in checks.items() if getattr(torch.cpu, check, lambda: False)()]


def prepack_supported(device: torch.device, dtype: torch.dtype) -> bool:
    if not (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    ):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and bool(bf16_matrix_units()))


# oneDNN's packed weights by key. A compiled graph cannot hold one (dynamo cannot fake an opaque tensor),
# so inside one a PackedLinear calls an opaque custom op that looks its weight up here. Weak references:
# the PackedLinear owns its weight, and an engine that is dropped frees it.
_PACKED_WEIGHTS: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
_NEXT_KEY = itertools.count()


@torch.library.custom_op("rosebench::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, bias: torch.Tensor | None, key: int, out_features: int) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, _PACKED_WEIGHTS[key], bias, "none", [], "")


@packed_linear.register_fake
def _(x: torch.Tensor, bias: torch.Tensor | None, key: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))  # the output's shape, for tracing


class PackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int) -> None:
        super().__init__()
        # A plain attribute, not a buffer: oneDNN tensors cannot be moved, cast or put in a state_dict.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.out_features = weight.shape[0]
        self.key = next(_NEXT_KEY)
        _PACKED_WEIGHTS[self.key] = self.packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return packed_linear(x, self.bias, self.key, self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def prepack(model: CausalLM, batch_hint: int) -> None:
    """Swap every linear layer and the output head (tied or not) for a prepacked one, in place."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in linears:
        parent_name, _, attribute = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name), attribute, PackedLinear(linear.weight, linear.bias, batch_hint)
        )
    if model.lm_head is None:  # tied: the head multiplies by the token embedding
        model.lm_head = PackedLinear(model.token_embedding.weight, None, batch_hint)
