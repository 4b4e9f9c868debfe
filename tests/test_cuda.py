"""The CUDA path: bf16 autocast, fused AdamW, flash attention, torch.compile, Muon, cached
decoding, checkpoints that move between devices, resume, and the default GPU run.

Skipped where there is no CUDA device (CI runs on CPUs); run them on a GPU machine with
`pytest tests/test_cuda.py`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import RunConfig
from tinygpt.generate import Decoder
from tinygpt.rundir import list_checkpoints
from tinygpt.training.loop import setup, train_step
from tinygpt.training.runs import resume, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = {
    "model": {"arch": "gpt", "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 128},
    "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "cosine", "min_lr": 3e-4},
    "train": {"steps": 40, "batch_size": 16, "eval_interval": 20, "eval_batches": 2,
              "log_interval": 5, "sample_tokens": 50, "device": "cuda"},
}  # fmt: skip


def small_config(
    model: dict | None = None, optim: dict | None = None, **train: object
) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {**SMALL["model"], **(model or {})},
            "optim": {**SMALL["optim"], **(optim or {})},
            "train": {**SMALL["train"], **train},
        }
    )


def losses(session, steps: int) -> list[float]:
    return [train_step(session)[0] for _ in range(steps)]


def test_auto_precision_is_bf16_with_fused_adamw_and_flash_attention(shakespeare) -> None:
    session = setup(small_config())
    assert session.device.type == "cuda"
    assert session.dtype == torch.bfloat16  # train.dtype "auto" on a bf16-capable GPU
    assert session.optimizer.defaults["fused"] is True
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash attention cannot run
        trained = losses(session, 30)
    assert trained[0] == pytest.approx(4.17, abs=0.3)  # about ln(65) at the start
    assert max(trained[-5:]) < trained[0] - 1.0


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_compiled_model_trains_and_matches_eager(shakespeare, optimizer: str) -> None:
    eager = setup(small_config(optim={"optimizer": optimizer}))
    compiled = setup(small_config(optim={"optimizer": optimizer}, compile=True))
    compiled.model.load_state_dict(eager.model.state_dict())
    a, b = losses(eager, 10), losses(compiled, 10)
    # same weights, same batches: kernels differ only in rounding (bf16 autocast)
    assert a == pytest.approx(b, abs=0.05)
    assert b[-1] < b[0]


def test_modern_switches_train_on_cuda(shakespeare) -> None:
    switches = {"rotary": True, "norm": "rmsnorm", "qk_norm": True, "activation": "relu2",
                "tie_weights": False, "zero_init": True, "embed_skip": True,
                "value_embeds": True, "logit_softcap": 15.0, "bias": False}  # fmt: skip
    session = setup(small_config(model=switches, optim={"optimizer": "muon"}))
    trained = losses(session, 30)
    assert max(trained[-5:]) < trained[0] - 1.0


def test_cached_decoding_matches_recomputation(shakespeare) -> None:
    session = setup(small_config(model={"rotary": True}))
    losses(session, 10)
    model = session.model.eval()
    block = model.config.block_size
    cached, plain = Decoder(model, block, use_cache=True), Decoder(model, block, use_cache=False)
    idx = torch.randint(65, (2, 7), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.inference_mode():
        a, b = cached.start(idx), plain.start(idx)
        for step in range(2 * block):  # past the point where the window slides
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=f"step {step}")
            token = a.argmax(dim=-1)
            a, b = cached.step(token), plain.step(token)


def test_checkpoint_written_on_cuda_loads_on_cpu(shakespeare, tmp_path: Path) -> None:
    out = io.StringIO()
    train(small_config(dtype="float32"), tmp_path / "run", out=out)
    assert "device: cuda" in out.getvalue() and "--- sample ---" in out.getvalue()
    checkpoint = load_checkpoint(tmp_path / "run")  # onto the CPU
    assert checkpoint.step == 40
    idx = torch.randint(65, (2, 64), generator=torch.Generator().manual_seed(0))
    on_cpu, _ = checkpoint.model.eval()(idx)
    on_gpu, _ = checkpoint.model.to("cuda")(idx.cuda())
    torch.testing.assert_close(on_cpu, on_gpu.cpu(), rtol=1e-3, atol=1e-3)


def test_resume_on_cuda_follows_an_uninterrupted_run(shakespeare, tmp_path: Path) -> None:
    config = small_config(model={"dropout": 0.1}, dtype="float32", sample_tokens=0)
    train(config, tmp_path / "whole", out=io.StringIO())
    train(config, tmp_path / "split", out=io.StringIO(), until=20)
    resume(tmp_path / "split", out=io.StringIO())
    whole, split = (
        safetensors.torch.load_file(list_checkpoints(tmp_path / name)[-1] / "model.safetensors")
        for name in ("whole", "split")
    )
    for name in whole:  # GPU kernels need not be bit-exact (atomics); the run must agree
        torch.testing.assert_close(whole[name], split[name], rtol=1e-3, atol=1e-4, msg=name)


def test_default_run_on_a_gpu_is_the_gpu_recipe_in_bf16(shakespeare, cli, tmp_path: Path) -> None:
    code, out, err = cli(
        "train", "--out", tmp_path / "run", "--model.n_layer", "2", "--train.steps", "20",
        "--train.eval_interval", "10", "--train.eval_batches", "2", "--train.sample_tokens", "0",
    )  # fmt: skip
    assert code == 0, err
    assert "device: cuda" in out and "bfloat16 autocast" in out  # cuda or cuda:0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["model"]["n_embd"], config["model"]["block_size"]) == (384, 256)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [line["step"] for line in lines if "val_loss" in line] == [0, 10, 20]
