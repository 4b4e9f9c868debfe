"""The lecture's own model, step by step: from one self-attention head to the Transformer.

Each step of the lecture's code adds one idea, and `config.lecture_step` picks how far to go:

    head       token and position embeddings, one head of self-attention, the lm_head
    multihead  several heads side by side, their outputs concatenated
    ffwd       a feed-forward layer after the attention: Linear(C, C) and a ReLU
    residual   n_layer Blocks: attention with an output projection, a 4x feed-forward,
               each added back to its input (residual connections)
    layernorm  a LayerNorm before each half of a Block and one at the end (the notebook's
               last model, with dropout)

As the lecture's code did at the time: PyTorch's default initialisation, and attention
scores scaled by C**-0.5 with C the embedding width (the later gpt.py scales by the head
size). The class names are the lecture's, so that a learner recognises them.

Shapes: B batch, T time, C n_embd, hs head size, V vocabulary.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tinygpt.config import ModelConfig
from tinygpt.models.base import LanguageModel

STEPS = ("head", "multihead", "ffwd", "residual", "layernorm")


def reached(step: str, name: str) -> bool:
    """Whether the lecture at `step` has come as far as the step called `name`."""
    return STEPS.index(step) >= STEPS.index(name)


class Head(nn.Module):
    """One head of self-attention."""

    tril: torch.Tensor  # (block_size, block_size): ones on and below the diagonal

    def __init__(self, config: ModelConfig, head_size: int) -> None:
        super().__init__()
        self.key = nn.Linear(config.n_embd, head_size, bias=False)
        self.query = nn.Linear(config.n_embd, head_size, bias=False)
        self.value = nn.Linear(config.n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(config.block_size, config.block_size)))
        self.dropout = nn.Dropout(config.dropout)
        self.recorded: list[torch.Tensor] | None = None  # the weights, when asked for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, T, C = x.shape  # (B, T, C)
        k = self.key(x)  # (B, T, hs)
        q = self.query(x)  # (B, T, hs)
        wei = q @ k.transpose(-2, -1) * C**-0.5  # (B, T, T): the affinities, scaled by C
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # no peeking ahead
        wei = F.softmax(wei, dim=-1)  # (B, T, T): each row a distribution over the past
        if self.recorded is not None:
            self.recorded.append(wei)
        wei = self.dropout(wei)
        v = self.value(x)  # (B, T, hs)
        return wei @ v  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """Several heads of self-attention in parallel; from the residual step on, projected."""

    def __init__(self, config: ModelConfig, num_heads: int, head_size: int, project: bool):
        super().__init__()
        self.heads = nn.ModuleList(Head(config, head_size) for _ in range(num_heads))
        self.proj = nn.Linear(num_heads * head_size, config.n_embd) if project else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # (B, T, num_heads * hs)
        if self.proj is not None:
            out = self.dropout(self.proj(out))  # (B, T, C)
        return out


class FeedFoward(nn.Module):  # sic: the lecture's spelling
    """A linear layer and a non-linearity; from the residual step on, 4x wide and back."""

    def __init__(self, config: ModelConfig, wide: bool) -> None:
        super().__init__()
        C = config.n_embd
        if wide:
            layers = [
                nn.Linear(C, 4 * C),
                nn.ReLU(),
                nn.Linear(4 * C, C),
                nn.Dropout(config.dropout),
            ]
        else:
            layers = [nn.Linear(C, C), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, T, C)


class Block(nn.Module):
    """Transformer block: communication (attention) followed by computation (feed-forward)."""

    def __init__(self, config: ModelConfig, layernorm: bool) -> None:
        super().__init__()
        head_size = config.n_embd // config.n_head
        self.sa = MultiHeadAttention(config, config.n_head, head_size, project=True)
        self.ffwd = FeedFoward(config, wide=True)
        self.ln1 = nn.LayerNorm(config.n_embd) if layernorm else nn.Identity()
        self.ln2 = nn.LayerNorm(config.n_embd) if layernorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.sa(self.ln1(x))  # the residual stream: each part adds to it
        x = x + self.ffwd(self.ln2(x))
        return x


class LectureLanguageModel(LanguageModel):
    """The lecture's language model at step `config.lecture_step` (see the module's story)."""

    supports_kv_cache = False  # the lecture recomputes the whole window for every token
    supports_attention_maps = True  # attention_weights()
    supports_block_crop = False  # a fine-tune keeps its block_size

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        step = config.lecture_step
        C = config.n_embd
        # the lecture's names, step by step, so that its code and this one read alike
        self.token_embedding_table = nn.Embedding(vocab_size, C)
        self.position_embedding_table = nn.Embedding(config.block_size, C)
        self.sa_head = Head(config, head_size=C) if step == "head" else None  # one, C wide
        self.sa_heads = None
        if step in ("multihead", "ffwd"):
            self.sa_heads = MultiHeadAttention(config, config.n_head, C // config.n_head, False)
        self.ffwd = FeedFoward(config, wide=False) if step == "ffwd" else None
        self.blocks = None
        if reached(step, "residual"):
            layernorm = step == "layernorm"
            self.blocks = nn.Sequential(*(Block(config, layernorm) for _ in range(config.n_layer)))
        self.ln_f = nn.LayerNorm(C) if step == "layernorm" else None
        self.lm_head = nn.Linear(C, vocab_size)

    def body(self) -> list[nn.Module]:
        """What lies between the embeddings and the lm_head at this step, in order."""
        parts = (self.sa_head, self.sa_heads, self.ffwd, self.blocks, self.ln_f)
        return [part for part in parts if part is not None]

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.size(1)  # idx: (B, T)
        tok_emb = self.token_embedding_table(idx)  # (B, T, C)
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))  # (T, C)
        x = tok_emb + pos_emb  # (B, T, C)
        for part in self.body():
            x = part(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def _heads_by_layer(self) -> list[list[Head]]:
        if self.sa_head is not None:
            return [[self.sa_head]]
        attentions = [m for m in self.modules() if isinstance(m, MultiHeadAttention)]
        return [cast(list[Head], list(m.heads)) for m in attentions]

    @torch.no_grad()
    def attention_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (layers, B, heads, T, T): every head's weights, layer by layer
        (a single layer before the residual step)."""
        layers = self._heads_by_layer()
        for head in (h for layer in layers for h in layer):
            head.recorded = []
        try:
            self(idx)
            recorded = [
                [cast(list[torch.Tensor], h.recorded)[0] for h in layer] for layer in layers
            ]
            return torch.stack([torch.stack(heads, dim=1) for heads in recorded])
        finally:
            for head in (h for layer in layers for h in layer):
                head.recorded = None

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The 2-D weights between the embeddings and the head (what Muon would train)."""
        return [p for part in self.body() for p in part.parameters() if p.dim() == 2]

    def describe(self) -> str:
        c = self.config
        shape = f"{c.n_head} heads x {c.n_embd} wide, context {c.block_size}"
        if reached(c.lecture_step, "residual"):
            shape = f"{c.n_layer} blocks x {shape}"
        return f"lecture step {c.lecture_step!r}, {shape}"
