"""bfloat16 on the CPU: the capability detection, the environment block that records it, prepacked bf16
linears where the CPU has bf16 matrix units, and the one-line note at start where it has none.

The packing and its dtype are checked whatever this CPU has: the tests override the detection (oneDNN runs
bf16 without the units, only slower, on AVX-512 and avx_ne_convert CPUs), so a bf16 model prepacked as
float32 fails here too, not only on a machine with AMX or AVX-512 BF16. Only where oneDNN refuses bf16
weights altogether (plain AVX2) do the packing tests skip."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import FAST, assert_ok, read_results, run_cli

from rosebench.engine import cpu_linear
from rosebench.engine.config import MODEL_PRESETS, EngineConfig
from rosebench.engine.cpu_linear import (
    BF16_MATRIX_UNITS,
    PackedLinear,
    bf16_matrix_units,
    prepack,
    prepack_supported,
)
from rosebench.engine.engine import Engine
from rosebench.engine.models.gpt2 import GPT2
from rosebench.engine.sequence import SamplingParams, Sequence
from rosebench.runner.environment import environment

CPU = torch.device("cpu")
HAS_UNITS = bool(bf16_matrix_units())
NOTE = "engine.dtype=bfloat16: this CPU"


def onednn_takes_bf16() -> bool:
    """Whether oneDNN reorders bf16 weights here: natively with the units, emulated (slower) on AVX-512
    (bw, vl, dq) or avx_ne_convert CPUs without them; plain AVX2 refuses."""
    if not prepack_supported(CPU, torch.float32):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=torch.bfloat16), 1)
    except RuntimeError:
        return False
    return True


needs_onednn_bf16 = pytest.mark.skipif(
    not onednn_takes_bf16(), reason="oneDNN refuses bf16 weights on this CPU (AVX2 without avx_ne_convert)"
)


@pytest.fixture
def claim_units(monkeypatch: pytest.MonkeyPatch):
    """Override the detection: ``claim_units(True)`` says this CPU has AMX, ``claim_units(False)`` none."""

    def claim(has_units: bool) -> None:
        monkeypatch.setattr(cpu_linear, "bf16_matrix_units", lambda: ["amx_bf16"] if has_units else [])

    return claim


def cpuinfo_flags() -> set[str]:
    """The first processor's flags, read from /proc/cpuinfo without torch."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no x86 flags (not an x86 CPU)")


def test_detection_agrees_with_proc_cpuinfo() -> None:
    flags = cpuinfo_flags()
    assert bf16_matrix_units() == [unit for unit in BF16_MATRIX_UNITS if unit in flags]
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        assert "avx512f" in flags
    elif capability == "AVX2":
        assert "avx2" in flags


def test_environment_block_records_the_capability() -> None:
    env = environment(CPU)
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_bf16_matrix_units"] == bf16_matrix_units()


def test_prepack_supported_follows_the_units() -> None:
    assert prepack_supported(CPU, torch.float32)
    assert prepack_supported(CPU, torch.bfloat16) == HAS_UNITS
    assert not prepack_supported(CPU, torch.float16)
    assert not prepack_supported(torch.device("cuda"), torch.bfloat16)


@pytest.mark.parametrize("has_units", [True, False], ids=["units", "no_units"])
def test_prepack_supported_follows_the_units_whatever_this_cpu_has(claim_units, has_units: bool) -> None:
    claim_units(has_units)
    assert prepack_supported(CPU, torch.float32)
    assert prepack_supported(CPU, torch.bfloat16) == has_units
    assert not prepack_supported(CPU, torch.float16)


class CausalAttention:
    """A whole-prompt KV attention for the model alone, independent of the engine's caches."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.kv[layer] = (k, v)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        k, v = self.kv[layer]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def tiny_logits(model: GPT2, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.inference_mode():
        return model.logits(model(ids, positions, CausalAttention()))


def bf16_outputs(model: GPT2) -> list[torch.dtype]:
    """Hooks that collect the dtype of every PackedLinear's output, in call order."""
    dtypes: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module.register_forward_hook(lambda _module, _args, out: dtypes.append(out.dtype))
    return dtypes


@needs_onednn_bf16
def test_prepacked_bf16_logits_match_unpacked_bf16() -> None:
    config = MODEL_PRESETS["tiny"]
    model = GPT2(config)
    model.init_weights(torch.Generator().manual_seed(0))
    reference = model.eval()  # float32
    plain = copy.deepcopy(reference).to(torch.bfloat16)
    packed = copy.deepcopy(plain)
    prepack(packed, batch_hint=4)
    linears = [m for m in packed.modules() if isinstance(m, PackedLinear)]
    assert len(linears) == 4 * config.n_layer + 1
    assert all(m.packed.dtype == torch.bfloat16 for m in linears)  # bf16 weights, not float32 ones
    assert all(m.bias is None or m.bias.dtype == torch.bfloat16 for m in linears)
    output_dtypes = bf16_outputs(packed)
    ids = torch.randint(0, config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(1))
    want, plain_logits, packed_logits = (tiny_logits(m, ids) for m in (reference, plain, packed))
    # Both paths multiply the same bf16 weights and accumulate in float32; they differ in where they
    # round to bf16 (8 significant bits: 2**-8 = 0.4% per rounding) and in summation order. On this model
    # bf16 itself is off float32 by ~0.005 on logits of magnitude ~1, so 1e-2 absolute plus torch's bf16
    # relative tolerance (1.6e-2) admits a few roundings' difference and still catches a wrong layout
    # or bias (errors of the size of the logits themselves).
    torch.testing.assert_close(packed_logits, plain_logits, rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(packed_logits, want, rtol=1.6e-2, atol=1e-2)
    assert output_dtypes == [torch.bfloat16] * len(linears)


def bf16_engine() -> Engine:
    return Engine(EngineConfig(model="tiny", dtype="bfloat16", device="cpu", max_num_seqs=4))


def generate(engine: Engine) -> list[int]:
    seq = Sequence(0, [464, 2068, 7586], SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert engine.admit(seq)
    engine.prefill([seq])
    while not seq.is_finished:
        engine.decode([seq])
    return list(seq.output_token_ids)


@needs_onednn_bf16
def test_bf16_engine_uses_prepacked_linears_with_units(claim_units) -> None:
    claim_units(True)
    engine = bf16_engine()
    packed = [m for m in engine.model.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 4 * engine.model_config.n_layer + 1
    assert all(m.packed.dtype == torch.bfloat16 for m in packed)
    output_dtypes = bf16_outputs(engine.model)
    assert len(generate(engine)) == 4
    assert output_dtypes and set(output_dtypes) == {torch.bfloat16}


def test_bf16_engine_stays_unpacked_without_units(claim_units) -> None:
    claim_units(False)
    engine = bf16_engine()
    assert not any(isinstance(m, PackedLinear) for m in engine.model.modules())
    assert all(p.dtype == torch.bfloat16 for p in engine.model.parameters())
    assert len(generate(engine)) == 4


def test_cli_notes_slow_bf16_once_and_records_the_capability(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path, *FAST, "engine.dtype=bfloat16", "engine.device=cpu", "num_requests=2", "max_new_tokens=4"
    )
    assert_ok(proc)
    notes = [line for line in proc.stderr.splitlines() if NOTE in line]
    if HAS_UNITS:
        assert notes == [], proc.stderr
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        assert notes == [
            f"rosebench: engine.dtype=bfloat16: this CPU ({capability}) has no AMX or AVX-512 BF16 units, "
            "so bf16 runs slower than float32 here"
        ], proc.stderr
    (results_file,) = tmp_path.glob("outputs/*/*/results.json")
    env = read_results(results_file.parent)["environment"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_bf16_matrix_units"] == bf16_matrix_units()
