"""Text generation: sample one token at a time from any model, as a stream.

As in the lecture, the model sees at most the last `block_size` tokens of the context.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from tinygpt.errors import UserError
from tinygpt.tokenizer import Tokenizer


def check_sampling(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens < 1:
        raise UserError(f"max new tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:  # also refuses NaN
        raise UserError(f"temperature must be 0 (greedy) or positive, got {temperature}")


def sample_next_token(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, vocab) logits -> (B, 1) token ids; temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, vocab)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new tokens one by one, continuing the (B, T) context `idx`."""
    check_sampling(max_new_tokens, temperature)
    model.eval()
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])  # (B, T, vocab)
        next_token = sample_next_token(logits[:, -1, :], temperature, generator)  # (B, 1)
        idx = torch.cat((idx, next_token), dim=1)  # (B, T + 1)
        yield next_token


def stream_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 1.0,
    seed: int = 1337,
    device: torch.device | None = None,
) -> Iterator[str]:
    """The decoded text of each new token; an empty prompt starts from token 0.

    The prompt and settings are checked here, before the first token is asked for.
    """
    check_sampling(max_new_tokens, temperature)
    device = device or next(model.parameters()).device
    ids = tokenizer.encode(prompt) if prompt else [0]
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = generate(model, idx, max_new_tokens, block_size, temperature, generator)
    return (tokenizer.decode([int(token[0, 0])]) for token in tokens)
