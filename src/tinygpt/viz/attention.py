"""Attention maps of a trained model: every layer and head, for one prompt, labelled with
the prompt's tokens; a PNG grid and a self-contained HTML page (nothing fetched from the
network) where one picks the layer and the head."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tinygpt.checkpoint import Checkpoint
from tinygpt.errors import UserError
from tinygpt.generate import encode_prompt
from tinygpt.viz import save_figure

# how whitespace shows in a label: a newline or a space would be invisible
VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥", "\r": "␍"}


@dataclass
class AttentionMaps:
    tokens: list[str]  # the prompt's tokens as text, whitespace made visible
    weights: torch.Tensor  # (layers, heads, T, T): row t is what token t attends to
    prompt_was_cut: bool  # longer than the context: the model saw its last block_size tokens


def attention_maps(checkpoint: Checkpoint, prompt: str) -> AttentionMaps:
    model = checkpoint.model.eval()
    if not model.supports_attention_maps:
        raise UserError(
            f"{checkpoint.path} holds a {checkpoint.config.model.arch} model, which has no "
            "attention to show (each token sees only itself); train a GPT or lecture preset"
        )
    if not prompt:
        raise UserError("give a prompt: the attention of its tokens is what is shown")
    encoded = encode_prompt(checkpoint.tokenizer, prompt, checkpoint.config.model.block_size)
    ids, was_cut = encoded.ids, encoded.was_cut
    weights = model.attention_weights(torch.tensor([ids]))[:, 0]  # (layers, heads, T, T)
    tokens = [checkpoint.tokenizer.token_text(i) for i in ids]
    labels = ["".join(VISIBLE.get(ch, ch) for ch in token) for token in tokens]
    return AttentionMaps(labels, weights.float(), was_cut)


def save_png(maps: AttentionMaps, path: Path) -> None:
    """A grid: one row per layer, one column per head."""
    from matplotlib.figure import Figure

    layers, heads, T, _ = maps.weights.shape
    size = min(3.0, 0.35 + 0.12 * T)
    figure = Figure(figsize=(size * heads + 1, size * layers + 0.5), layout="constrained")
    grid = figure.subplots(layers, heads, squeeze=False)
    labelled = T <= 48  # beyond that the letters overlap
    for layer in range(layers):
        for head in range(heads):
            axes = grid[layer][head]
            axes.imshow(maps.weights[layer, head].numpy(), cmap="viridis", vmin=0, vmax=1)
            axes.set_title(f"layer {layer}, head {head}", fontsize=8)
            ticks = list(range(T)) if labelled else []
            axes.set_xticks(ticks, [maps.tokens[t] for t in ticks], fontsize=6, rotation=90)
            axes.set_yticks(ticks, [maps.tokens[t] for t in ticks], fontsize=6)
    figure.suptitle("attention: row = token attending, column = token attended to")
    save_figure(figure, path, dpi=110)


def save_html(maps: AttentionMaps, path: Path) -> None:
    """One page with everything inside it: the weights as JSON, the drawing as a script."""
    data = {"tokens": maps.tokens, "weights": maps.weights.round(decimals=4).tolist()}
    text = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # no early </script>
    page = PAGE.replace("__DATA__", text)
    path.write_text(page, encoding="utf-8")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tinygpt attention</title>
<style>
  body { font-family: sans-serif; margin: 1.5em; }
  table { border-collapse: collapse; }
  td, th { width: 1.6em; height: 1.6em; text-align: center; font-size: 0.8em; }
  th { font-weight: normal; font-family: monospace; }
  td { border: 1px solid #eee; }
  #note { color: #555; margin: 0.5em 0 1em; }
</style>
</head>
<body>
<h1>Attention</h1>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
<p id="note">Row: the token that attends. Column: the token it attends to. Each row sums
to 1; the future (above the diagonal) is never seen. Hover a cell for its weight.</p>
<table id="grid"></table>
<script>
const data = __DATA__;
const layerPick = document.getElementById("layer");
const headPick = document.getElementById("head");
data.weights.forEach((_, i) => layerPick.add(new Option(i, i)));
data.weights[0].forEach((_, i) => headPick.add(new Option(i, i)));
function colour(w) {
  const light = Math.round(100 - 70 * w);
  return "hsl(230, 70%, " + light + "%)";
}
function draw() {
  const wei = data.weights[layerPick.value][headPick.value];
  const grid = document.getElementById("grid");
  grid.innerHTML = "";
  const top = grid.insertRow();
  top.appendChild(document.createElement("th"));
  data.tokens.forEach(t => {
    const th = document.createElement("th");
    th.textContent = t;
    top.appendChild(th);
  });
  wei.forEach((row, i) => {
    const tr = grid.insertRow();
    const th = document.createElement("th");
    th.textContent = data.tokens[i];
    tr.appendChild(th);
    row.forEach(w => {
      const td = tr.insertCell();
      td.style.background = colour(w);
      td.title = w.toFixed(4);
    });
  });
}
layerPick.onchange = draw;
headPick.onchange = draw;
draw();
</script>
</body>
</html>
"""
