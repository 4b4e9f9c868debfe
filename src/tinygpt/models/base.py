"""The one interface every language model offers, and that `build_model` returns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    import numpy as np

    from tinygpt.models.gpt import KVCache


class LanguageModel(nn.Module):
    """(B, T) token ids -> (B, T, V) next-token logits, and their mean cross-entropy when
    targets are given.

    A model says what else it can do through the `supports_*` flags; callers ask them
    (`model.supports_kv_cache`) before calling the matching method, which otherwise raises.
    It is an nn.Module itself rather than a typing Protocol, because every caller also needs
    it as a module (its parameters, state_dict, DDP) and Python's types cannot say both.
    """

    supports_kv_cache: bool = False  # new_cache(), and forward(..., cache=)
    supports_attention_maps: bool = False  # attention_weights()
    supports_block_crop: bool = False  # crop_block_size()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The 2-D weights between the embeddings and the head, which Muon trains."""
        raise NotImplementedError

    def describe(self) -> str:
        """Its kind and shape in one line, for logs and `tinygpt inspect`."""
        raise NotImplementedError

    def uniform_loss(self) -> float | None:
        """ln(vocabulary) where the model predicts the uniform distribution whatever its
        input (every logit zero, as a zero-initialised head makes it): its loss on any text,
        known without a forward pass. None where its predictions depend on the input."""
        return None

    def warm_start(self, train_tokens: np.ndarray) -> None:
        """Before the first step of a new run: set what the training split's statistics
        tell before any training (a GPT's n-gram table from its counts). Nothing by default."""

    def attention_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (layers, B, heads, T, T): each head's attention, row by row."""
        raise NotImplementedError(f"{type(self).__name__} has no attention maps")

    def crop_block_size(self, block_size: int) -> None:
        """Keep the first `block_size` positions of the context (a shorter fine-tune)."""
        raise NotImplementedError(f"{type(self).__name__} keeps its block_size")

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty key/value cache for `batch_size` rows, on the model's device and dtype."""
        raise NotImplementedError(f"{type(self).__name__} has no key/value cache")
