"""ONNX export: any run as an ONNX graph with its tokenizer, for runtimes outside Python
(extra `onnx`: `pip install 'tinygpt[onnx]'`).

The graph is the model's forward pass, (batch, tokens) ids -> (batch, tokens, vocab)
logits, for any batch and any number of tokens up to the context: every architecture
tinygpt trains (bigram, the lecture's steps, the GPT with any switch) exports the same
way. Generating is the caller's loop; the model card shows one that slides the window as
`tinygpt sample` does.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tinygpt.checkpoint import Checkpoint, load_checkpoint, write_export_description
from tinygpt.config import SampleConfig
from tinygpt.errors import UserError
from tinygpt.files import check_new_folder, folder_written_whole
from tinygpt.generate import window_keep

MODEL_FILE, TOKENIZER_FILE, CARD_FILE = "model.onnx", "tokenizer.json", "README.md"


class Logits(nn.Module):
    """The model's logits alone: what the graph returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]  # (B, T, V)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Without the exporter's notes on its own internals (warnings, log lines), restored
    after it."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def require_onnx() -> None:
    try:
        import onnxscript  # noqa: F401  # torch's exporter needs it
    except ImportError:
        raise UserError(
            "ONNX export needs onnx and onnxscript: pip install 'tinygpt[onnx]'"
        ) from None


def export_onnx(run_dir: Path, out: Path) -> Path:
    """Write a run's newest checkpoint as `model.onnx`, `tokenizer.json` (the `tokenizers`
    library's format, which runtimes in many languages read), `tinygpt.json` (the run's
    config and tokenizer) and a model card, in a new folder made whole before it appears."""
    require_onnx()
    check_new_folder(out, "export")
    checkpoint = load_checkpoint(run_dir)
    model = Logits(checkpoint.model.float().eval())
    block = checkpoint.config.model.block_size
    example = torch.zeros(2, min(block, 8), dtype=torch.long)
    tokens = torch.export.Dim("tokens", min=1, max=block)
    batch = torch.export.Dim("batch", min=1)
    with folder_written_whole(out) as tmp:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                model, (example,), tmp / MODEL_FILE, input_names=["input_ids"],
                output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: tokens}},
                dynamo=True, verbose=False, external_data=False,
            )  # fmt: skip
        hf = checkpoint.tokenizer.to_huggingface()
        (tmp / TOKENIZER_FILE).write_text(hf.to_str(), encoding="utf-8")
        write_export_description(tmp, checkpoint)
        (tmp / CARD_FILE).write_text(model_card(checkpoint, out), encoding="utf-8")
    return out


def model_card(checkpoint: Checkpoint, out: Path) -> str:
    run, metrics = checkpoint.config, checkpoint.metrics
    block = run.model.block_size
    keep = window_keep(block, SampleConfig.window)
    loss = metrics.get("whole_val_loss", metrics.get("val_loss"))
    score = f"{loss:.4f} nats per token" if loss else "not measured"
    return f"""---
library_name: onnx
pipeline_tag: text-generation
tags:
- tinygpt
- onnx
- {run.data.tokenizer}-level
datasets:
- {Path(run.data.dataset).name}
---

# {out.name}

A small language model trained from scratch with tinygpt, as an ONNX graph:
`input_ids` (batch, tokens), int64, up to {block} tokens -> `logits` (batch, tokens, vocabulary).

- model: {checkpoint.model.describe()}
- tokenizer: `{run.data.tokenizer}` (`tokenizer.json`, the `tokenizers` library's format)
- trained: {checkpoint.step:,} steps from {run.recipe()}; val loss {score}

| | |
|---|---|
| context | **{block} tokens**; past it, slide the window as below (full: keep the last {keep}) |

## Use

```python
import numpy as np, onnxruntime, tokenizers
session = onnxruntime.InferenceSession("{out / MODEL_FILE}")
tokenizer = tokenizers.Tokenizer.from_file("{out / TOKENIZER_FILE}")
ids = tokenizer.encode("ROMEO:").ids
for _ in range(100):  # greedy; the window slides as `tinygpt sample`'s does
    n = len(ids) if len(ids) <= {block} else {keep} + (len(ids) - {block} - 1) % {block - keep + 1}
    logits = session.run(None, {{"input_ids": np.array([ids[-n:]], dtype=np.int64)}})[0]
    ids.append(int(logits[0, -1].argmax()))
print(tokenizer.decode(ids))
```
"""
