"""Reduced precision on CPUs: one capability check decides, and every place follows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinygpt import runtime
from tinygpt.config import ModelConfig, OptimConfig, resolve
from tinygpt.errors import UserError
from tinygpt.models.gpt import GPT
from tinygpt.training.optim import BatchedMuon, make_optimizer, orthogonalise

CPU = torch.device("cpu")


@pytest.fixture(params=[False, True], ids=["no-native-bf16", "native-bf16"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The capability check answers as a CPU without (or with) native bfloat16 would."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_the_verdict_follows_the_measured_products(monkeypatch: pytest.MonkeyPatch) -> None:
    for bf16_ms, expected in ((0.2, True), (0.8, True), (60.0, False)):
        times = {torch.float32: 0.3e-3, torch.bfloat16: bf16_ms * 1e-3}
        monkeypatch.setattr(runtime, "_matmul_seconds", lambda dtype, t=times: t[dtype])
        runtime.cpu_has_native_bf16.cache_clear()
        assert runtime.cpu_has_native_bf16() is expected
    runtime.cpu_has_native_bf16.cache_clear()


def test_the_real_measurement_is_cached_and_named_in_the_cpu_line() -> None:
    runtime.cpu_has_native_bf16.cache_clear()
    verdict = runtime.cpu_has_native_bf16()
    assert runtime.cpu_has_native_bf16.cache_info().hits == 0
    assert runtime.cpu_has_native_bf16() is verdict
    assert runtime.cpu_has_native_bf16.cache_info().hits == 1
    line = runtime.cpu_description()
    assert torch.backends.cpu.get_cpu_capability() in line
    assert ("no native bfloat16" in line) is not verdict


def muon_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), 10)


def test_muon_orthogonalises_in_float32_without_native_bf16(native: bool) -> None:
    optimizer = make_optimizer(muon_model(), OptimConfig(optimizer="muon"), CPU)
    muon = optimizer.optimizers[0]
    assert muon.ns_dtype == (torch.bfloat16 if native else torch.float32)


def test_muon_ns_dtype_asked_for_is_taken_either_way(native: bool, capsys) -> None:
    """float32 is faster for small matrices even on a CPU with native bfloat16 (cpu-fast);
    bfloat16 asked for where it is not native works, with the slow-path warning."""
    for name, expected in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        config = OptimConfig(optimizer="muon", muon_ns_dtype=name)
        muon = make_optimizer(muon_model(), config, CPU).optimizers[0]
        assert muon.ns_dtype == expected
    err = capsys.readouterr().err
    assert ("Muon's orthogonalisation in bfloat16 will be slow here" in err) is not native


def test_a_preset_names_its_ns_dtype_and_a_bad_one_is_refused() -> None:
    assert resolve(preset="cpu-fast").optim.muon_ns_dtype == "float32"
    assert resolve(preset="cpu-10min").optim.muon_ns_dtype == "auto"
    with pytest.raises(UserError, match=r"unknown optim\.muon_ns_dtype 'float16'"):
        OptimConfig(muon_ns_dtype="float16")


def test_autocast_auto_stays_float32_on_a_cpu_either_way(native: bool, capsys) -> None:
    assert runtime.autocast_dtype("auto", CPU) is None
    assert runtime.autocast_dtype("float32", CPU) is None
    assert capsys.readouterr().err == ""


def test_an_explicit_bf16_request_works_and_warns_only_without_native(native, capsys) -> None:
    assert runtime.autocast_dtype("bfloat16", CPU) is torch.bfloat16
    err = capsys.readouterr().err
    assert ("will be slow here" in err) is not native
    assert err.count("\n") == (0 if native else 1)


def test_sampling_in_bf16_warns_only_without_native(native, cli, run_dir: Path) -> None:
    code, out, err = cli("sample", run_dir, "--max-new-tokens", "20", "--dtype", "bfloat16")
    assert code == 0 and len(out) == 21
    assert ("sampling in bfloat16 will be slow here" in err) is not native
    code, _, err = cli("sample", run_dir, "--max-new-tokens", "20")
    assert code == 0 and "warning" not in err


def test_newton_schulz_in_float32_agrees_with_bf16_to_bf16_precision() -> None:
    torch.manual_seed(0)
    updates = torch.randn(3, 48, 16)
    coefficients = (3.4445, -4.7750, 2.0315)
    results = {
        dtype: orthogonalise(updates, coefficients=coefficients, steps=5, eps=1e-7, dtype=dtype)
        for dtype in (torch.bfloat16, torch.float32, torch.float64)
    }
    assert results[torch.float32].dtype == torch.float32

    def relative_error(dtype: torch.dtype, reference: torch.dtype) -> float:
        a, b = results[dtype].double(), results[reference].double()
        return ((a - b).norm() / b.norm()).item()

    assert relative_error(torch.float32, torch.float64) < 1e-5
    # five iterations of products rounded to bfloat16's 8 bits (2^-8 = 0.4%) each: about 1.5%
    assert 2**-9 < relative_error(torch.bfloat16, torch.float32) < 8 * 2**-8


def test_muon_steps_in_float32_and_bf16_agree() -> None:
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 8), (8, 32)]
    params = {
        dtype: [torch.nn.Parameter(torch.randn(*s, generator=torch.Generator().manual_seed(i)))
                for i, s in enumerate(shapes)]
        for dtype in (torch.bfloat16, torch.float32)
    }  # fmt: skip
    optimizers = {
        dtype: BatchedMuon(ps, ns_dtype=dtype, lr=0.02, weight_decay=0.1, momentum=0.8)
        for dtype, ps in params.items()
    }
    for _ in range(3):
        grads = [torch.randn(*s) for s in shapes]
        for dtype, optimizer in optimizers.items():
            for p, g in zip(params[dtype], grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(params[torch.bfloat16], params[torch.float32], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)  # three steps of lr 0.02
