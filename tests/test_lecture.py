"""The lecture's path: each step as a preset, the self-attention trick with the notebook's
values, and the learner's own example in `inspect`."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygpt.config import ModelConfig, resolve
from tinygpt.models import build_model, count_parameters, parameter_summary
from tinygpt.models.lecture import Head
from tinygpt.training.runs import train

from .conftest import metrics

# parameters of each step at tiny shakespeare's 65 characters: the lecture's code, counted
STEP_PARAMETERS = {
    "lecture-bigram": 65 * 65,
    "lecture-head": 7_553,  # 65x32 + 8x32 embeddings, 3 x 32x32 head, 32x65 + 65 lm_head
    "lecture-multihead": 7_553,  # 4 heads of 8: the same matrices, cut in four
    "lecture-ffwd": 8_609,  # + Linear(32, 32)
    "lecture-residual": 41_921,  # 3 blocks of 12,480: projection and 4x feed-forward
    "lecture-layernorm": 42_369,  # + 2 LayerNorms a block and a final one
    "lecture-notebook": 209_729,  # the notebook prints 0.209729 M parameters
}


@pytest.mark.parametrize("preset", list(STEP_PARAMETERS))
def test_every_step_preset_builds_trains_and_counts(preset, shakespeare, tmp_path) -> None:
    quick = {"steps": 3, "eval_interval": 3, "eval_batches": 2, "sample_tokens": 20}
    config = resolve(preset, overrides={"train": quick})
    model = build_model(config.model, 65)
    assert count_parameters(model) == STEP_PARAMETERS[preset]
    out = io.StringIO()
    final = train(config, tmp_path / "run", out=out)
    printed = " ".join(out.getvalue().split())
    assert f"{STEP_PARAMETERS[preset]:,} parameters" in printed
    start = metrics(tmp_path / "run")[0]  # step 0: the same fixed batches as at the end
    assert final["train_loss"] < start["train_loss"]  # three steps went downhill


def test_the_notebook_model_is_shown_part_by_part(cli, shakespeare) -> None:
    code, out, _ = cli("inspect", "--preset", "lecture-notebook")
    assert code == 0 and "209,729 parameters (0.209729M)" in out
    assert "blocks 4 x 49,792 (sa 16,448, ffwd 33,088, ln1 128, ln2 128)" in out
    summary = parameter_summary(build_model(resolve("cpu-fast").model, 65))
    assert summary.startswith("wte 4,160; blocks 2 x 49,282 (ln_1 64, attn 16,384")


def test_attention_is_scaled_by_the_embedding_width_as_the_lecture_code_was() -> None:
    torch.manual_seed(0)
    config = ModelConfig(arch="lecture", lecture_step="multihead", n_embd=32, block_size=8)
    head = Head(config, head_size=8)
    x = torch.randn(2, 5, 32)
    k, q, v = head.key(x), head.query(x), head.value(x)
    scores = (q @ k.transpose(-2, -1) / 32**0.5).masked_fill(
        torch.ones(5, 5).tril() == 0, float("-inf")
    )
    torch.testing.assert_close(head(x), scores.softmax(-1) @ v)


def test_the_trick_prints_the_notebooks_values(cli, tmp_path: Path) -> None:
    code, out, _ = cli("trick", "--png", tmp_path / "maps")
    assert code == 0
    for expected in (
        "[4.6667, 5.3333]",  # the toy a @ b
        "torch.allclose(xbow, xbow2, atol=1e-7) = True",
        "torch.allclose(xbow, xbow3, atol=1e-7) = True",
        "[0.1574, 0.8426, 0.0000",  # version 4: wei[0], row 2
        "k.var() = 1.0449, q.var() = 1.0700, wei.var() = 1.0918",
        "= [0.1925, 0.1426, 0.2351, 0.1426, 0.2872]",
        "= [0.0326, 0.0030, 0.1615, 0.0030, 0.8000]",
        "one feature across the batch: mean 0.1469, std 0.8803",
        "one row across its features: mean -0.0000, std 1.0000",
    ):
        assert expected in out, expected
    maps = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert maps == [f"trick-version{v}.png" for v in (2, 3, 4)]


def encoded(out: str) -> tuple[list[int], str]:
    ids = ast.literal_eval(re.search(r"^encode\(.*\) = (\[.*\])$", out, re.M).group(1))
    decoded = ast.literal_eval(re.search(r"^decode\(.*\) = (.*)$", out, re.M).group(1))
    return ids, decoded


def test_inspect_encodes_the_learners_example(cli, shakespeare) -> None:
    code, out, _ = cli("inspect")
    assert code == 0 and encoded(out) == ([46, 47, 47, 1, 58, 46, 43, 56, 43], "hii there")
    code, out, _ = cli("inspect", "--example", "Hello NanoGPT")
    assert encoded(out) == ([20, 43, 50, 50, 53, 1, 26, 39, 52, 53, 19, 28, 32], "Hello NanoGPT")
    code, out, err = cli("inspect", "--example", "naïve")
    assert code == 2 and out == "" and "'ï' (U+00EF) at position 2 is not in the vocabulary" in err


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(start=st.integers(0, 1_000_000), length=st.integers(1, 60))
def test_inspect_round_trips_any_text_of_the_corpus(
    cli, shakespeare_path: Path, start: int, length: int
) -> None:
    text = shakespeare_path.read_text(encoding="utf-8")[start : start + length]
    code, out, _ = cli("inspect", "--data", shakespeare_path, f"--example={text}")
    assert code == 0 and encoded(out)[1] == text
