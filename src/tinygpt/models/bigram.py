"""The lecture's bigram language model: the next token's logits are read off a table row."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinygpt.models.base import LanguageModel


class BigramLanguageModel(LanguageModel):
    """An (vocab x vocab) table: row i holds the logits of the token that follows token i."""

    # no KV cache (it reads one token), no attention maps, and a fine-tune keeps its
    # block_size: LanguageModel's flags as they are

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        # the lecture's name for the table (the GPT's modules carry GPT-2's names instead)
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def hidden_matrices(self) -> list[nn.Parameter]:
        """None: the table is an embedding, which Muon leaves to AdamW."""
        return []

    def describe(self) -> str:
        vocab = self.token_embedding_table.num_embeddings
        return f"bigram table, {vocab} x {vocab}"

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.token_embedding_table(idx)  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss
