"""ONNX export: every architecture as a graph that onnxruntime runs, with the same logits
and, through the model card's own loop, the same greedy text as `tinygpt sample`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinygpt.checkpoint import load_checkpoint

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FEW_STEPS = (
    "--steps", "30", "--train.batch_size", "4", "--train.eval_interval", "30",
    "--train.eval_batches", "1", "--train.whole_val", "false", "--train.sample_tokens", "0",
)  # fmt: skip
RUNS = {  # every architecture: the CPU default's GPT, the lecture's last step, the bigram
    "cpu-fast": ("--preset", "cpu-fast"),
    "lecture": ("--preset", "lecture-notebook", "--model.n_layer", "2", "--model.block_size", "16"),
    "bigram": ("--preset", "bigram"),
}


@pytest.mark.parametrize("name", RUNS)
def test_an_onnx_export_runs_in_onnxruntime_as_tinygpt_does(
    name: str, shakespeare, shakespeare_path: Path, tmp_path: Path, cli
) -> None:
    run, out = tmp_path / "run", tmp_path / "onnx"
    code, _, err = cli("train", *RUNS[name], *FEW_STEPS, "--out", run)
    assert code == 0, err
    code, printed, err = cli("export", run, "--to", "onnx", "--out", out)
    assert code == 0, err
    assert printed.splitlines()[-1] == str(out / "README.md")
    ours = load_checkpoint(run)
    block = ours.config.model.block_size
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    ids = ours.tokenizer.encode(shakespeare_path.read_text(encoding="utf-8")[:2000])
    for rows, tokens in ((1, 1), (3, block // 2), (2, block)):  # any batch, any length
        batch = torch.tensor([ids[i * 50 : i * 50 + tokens] for i in range(rows)])
        theirs = session.run(None, {"input_ids": batch.numpy()})[0]
        with torch.no_grad():
            expected = ours.model.eval()(batch)[0].numpy()
        np.testing.assert_allclose(theirs, expected, atol=1e-4, rtol=1e-4)
    # the card's example, in a process that cannot import tinygpt: tinygpt sample's text
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"30 steps from the `{RUNS[name][1]}` preset" in card
    example = card.split("```python\n")[1].split("```")[0]
    blocked = "import sys; sys.modules['tinygpt'] = None; exec(sys.stdin.read())"
    done = subprocess.run(
        [sys.executable, "-c", blocked], input=example, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    code, sampled, _ = cli(
        "sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "100", "--temperature", "0"
    )
    assert code == 0 and done.stdout == sampled  # 100 tokens: past the context, it slid
