"""Text generation: a stream of tokens from any model, with a KV cache for the GPT.

As in the lecture, the model conditions on at most the last `block_size` tokens. The GPT
prefills the prompt once and then decodes one token per step from its KV cache. When the
context fills, each position's embedding changes as the window slides (learned positions,
and every layer's view of the first tokens in the window), so the cache cannot be rolled
without changing the result. Two window policies say what happens then:

- `shift` (the default; llama.cpp's context shift): the window keeps its last half, which
  is prefilled once, and the next half-window of tokens comes from the cache again. Each
  token then sees between half and all of a full window, for about the cost of cached
  decoding. Measured, this conditioning is not worse: the models tried predict val tokens
  0.013-0.020 nats better from half to all of a window than from exactly a full one
  (benchmarks/RESULTS.md, "Long generations").
- `exact` (the lecture's): the window slides by one token each step, and the decoder
  re-prefills the last `block_size` tokens for every new one, at the cost of decoding
  without a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from tinygpt.checkpoint import Checkpoint
from tinygpt.config import SampleConfig, WindowPolicy
from tinygpt.errors import UserError
from tinygpt.models import LanguageModel
from tinygpt.models.gpt import KVCache
from tinygpt.models.layers import with_fast_matvec
from tinygpt.runtime import warn_if_bf16_is_slow
from tinygpt.tokenizers import TextDecoder, Tokenizer


class Decoder:
    """Next-token logits for a growing context: `start(prompt)`, then `step(token)`."""

    def __init__(
        self,
        model: LanguageModel,
        block_size: int,
        use_cache: bool = True,
        window: WindowPolicy = SampleConfig.window,
    ) -> None:
        self.use_cache = use_cache and model.supports_kv_cache
        # one token a step from the cache: a product of one row, faster on some CPUs
        self.model = (with_fast_matvec(model) if self.use_cache else model).eval()
        self.block_size = block_size
        self.keep = window_keep(block_size, window)
        self.cache: KVCache | None = None
        self.window = torch.empty(0)  # (B, <= block_size): the tokens the model sees

    def start(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) prompt -> (B, V) logits of the first new token."""
        self.window = idx[:, -self.block_size :]
        if self.use_cache:
            self.cache = self.model.new_cache(idx.size(0))
        return self._prefill()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """(B,) chosen tokens -> (B, V) logits of the token after them."""
        self.window = torch.cat((self.window, token[:, None]), dim=1)
        if self.window.size(1) > self.block_size:  # full: slide, or shift to the last half
            self.window = self.window[:, -self.keep :]
            return self._prefill()
        if self.cache is None:
            return self._prefill()
        logits, _ = self.model(token[:, None], cache=self.cache)  # (B, 1, V)
        return logits[:, -1]

    def _prefill(self) -> torch.Tensor:
        if self.cache is None:
            logits, _ = self.model(self.window)  # (B, T, V)
        else:
            self.cache.reset()
            logits, _ = self.model(self.window, cache=self.cache)
        return logits[:, -1]


def window_keep(block_size: int, window: WindowPolicy) -> int:
    """What a full window keeps when a token arrives: all but its oldest, or its last half."""
    return block_size if window == "exact" else max(block_size // 2, 1)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top k and outside the top-p nucleus (0 / 1: off)."""
    if top_k and top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = mass_before >= top_p  # keep the smallest set whose mass reaches p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_token(
    logits: torch.Tensor, sampling: SampleConfig, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens; row i draws from generators[i] alone."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    rows = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)]
    return torch.cat(rows)


@torch.inference_mode()  # lighter than no_grad: no version counters, no views tracked
def generate(
    model: LanguageModel,
    idx: torch.Tensor,
    block_size: int,
    sampling: SampleConfig,
    generators: Sequence[torch.Generator] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield (B,) new tokens one step at a time, continuing the (B, T) context `idx`."""
    generators = generators or seeded_generators(sampling.seed, idx.size(0), idx.device)
    decoder = Decoder(model, block_size, sampling.use_cache, sampling.window)
    logits = decoder.start(idx)
    for i in range(sampling.max_new_tokens):
        token = sample_next_token(logits, sampling, generators)
        yield token
        if i + 1 < sampling.max_new_tokens:
            logits = decoder.step(token)


def seeded_generators(seed: int, count: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample, seeded seed, seed + 1, ...: a sample does not depend on
    how many others are drawn beside it."""
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(count)]


@dataclass(frozen=True)
class Prompt:
    """A prompt as the model reads it."""

    ids: list[int]  # what the model conditions on: the prompt's last block_size tokens
    length: int  # tokens in the whole prompt

    @property
    def was_cut(self) -> bool:
        return self.length > len(self.ids)


def encode_prompt(tokenizer: Tokenizer, prompt: str, block_size: int) -> Prompt:
    """A prompt's token ids, cut to its last `block_size`: what `sample`, `serve` and the
    pictures condition on. An empty prompt is the start of a document: the end-of-text
    token where the tokenizer has one, else a newline (token 0 of the lecture's
    vocabulary)."""
    ids = tokenizer.encode(prompt) if prompt else [start_token(tokenizer)]
    return Prompt(ids[-block_size:], len(ids))


def start_token(tokenizer: Tokenizer) -> int:
    if tokenizer.eot_id is not None:
        return tokenizer.eot_id
    try:
        newline = tokenizer.encode("\n")
    except UserError:  # a char vocabulary without one
        newline = []
    return newline[0] if len(newline) == 1 else 0


class StopScanner:
    """Cut a text stream at the first stop string, holding back what could begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not stop for stop in stops):
            raise UserError("a stop string must not be empty")
        self.stops = list(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that is safe to show after `piece`; sets `stopped` at a stop string."""
        self.pending += piece
        cuts = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            out, self.pending = self.pending[: min(cuts)], ""
            return out
        keep = len(self.pending) - self.hold
        out, self.pending = self.pending[:keep], self.pending[keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def stream_texts(
    model: LanguageModel,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    block_size: int,
    sampling: SampleConfig,
    stops: Sequence[str] = (),
    *,
    raw: bool = False,
) -> Iterator[tuple[int, str]]:
    """(sample index, text) pieces as they are generated, each cut at its first stop string
    (`raw`: as decode_rows).

    The settings are checked here, before the first token is asked for.
    """
    device = next(model.parameters()).device
    idx = torch.tensor([list(ids)] * sampling.num_samples, dtype=torch.long, device=device)
    pieces = decode_rows(generate(model, idx, block_size, sampling), tokenizer, stops, raw)
    return ((piece.row, piece.text) for piece in pieces if piece.text)


@dataclass(frozen=True)
class Piece:
    """What a row of a batch adds to its text at one step."""

    row: int
    text: str
    finish: str | None  # "stop" (a stop string came) or "length" (the tokens ran out)
    tokens: int  # tokens the row has read so far


def decode_rows(
    tokens: Iterator[torch.Tensor],
    tokenizer: Tokenizer,
    stops: Sequence[str] = (),
    raw: bool = False,
) -> Iterator[Piece]:
    """(B,) token ids a step -> each row's text as it comes, cut at its first stop string:
    the one path from tokens to text, for `tinygpt sample` and `tinygpt serve` alike.

    A character split over tokens waits for its last byte. A row's last piece says why it
    ended; a row that ended yields nothing more, and the stream ends when every row has.
    The stop strings are checked here, before the first token is asked for. `raw`: bytes
    that are not UTF-8 come as surrogate escapes (`text.encode("utf-8", "surrogateescape")`
    gives them back), not escaped for reading.
    """
    StopScanner(stops)  # a bad stop string fails now, not at the first token
    return _decoded(tokens, tokenizer, stops, raw)


class RowText:
    """One row's text as its tokens come: a character split over tokens waits for its last
    byte, and the text ends at the first stop string."""

    def __init__(
        self, row: int, tokenizer: Tokenizer, stops: Sequence[str], raw: bool = False
    ) -> None:
        self.row = row
        self.decoder = TextDecoder(tokenizer, raw)
        self.scanner = StopScanner(stops)
        self.tokens = 0  # read so far

    @property
    def stopped(self) -> bool:
        return self.scanner.stopped

    def feed(self, token: int) -> Piece | None:
        """The piece this token adds (None: nothing to show yet); its finish is "stop"
        when a stop string came."""
        self.tokens += 1
        text = self.scanner.feed(self.decoder.feed(token))
        if text or self.stopped:
            return Piece(self.row, text, "stop" if self.stopped else None, self.tokens)
        return None

    def end(self) -> Piece:
        """The last piece, once the tokens ran out: what was held back, and "length"."""
        text = self.scanner.feed(self.decoder.flush())
        text += "" if self.stopped else self.scanner.flush()
        return Piece(self.row, text, "stop" if self.stopped else "length", self.tokens)


def _decoded(
    tokens: Iterator[torch.Tensor], tokenizer: Tokenizer, stops: Sequence[str], raw: bool
) -> Iterator[Piece]:
    rows: list[RowText] = []
    for token in tokens:
        ids = token.tolist()
        if not rows:  # the batch's size is the first step's
            rows = [RowText(i, tokenizer, stops, raw) for i in range(len(ids))]
        for row, t in zip(rows, ids, strict=True):
            if not row.stopped and (piece := row.feed(t)) is not None:
                yield piece
        if all(row.stopped for row in rows):
            return
    for row in rows:
        if not row.stopped:
            yield row.end()


def stream_text(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    block_size: int,
    sampling: SampleConfig,
    stops: Sequence[str] = (),
) -> Iterator[str]:
    """The text of one sample (sampling.num_samples is taken as 1), piece by piece."""
    single = SampleConfig(**{**vars(sampling), "num_samples": 1})
    ids = encode_prompt(tokenizer, prompt, block_size).ids
    pieces = stream_texts(model, tokenizer, ids, block_size, single, stops)
    return (text for _, text in pieces)


SAMPLE_SEPARATOR = "\n---------------\n"


@dataclass
class Samples:
    """Samples on their way: `pieces` yields (sample index, text) as they are generated."""

    prompt: str
    count: int
    pieces: Iterator[tuple[int, str]]
    prompt_was_cut: bool  # the prompt was longer than the context: the model sees its end

    def texts(self, on_piece: Callable[[int, str], None] | None = None) -> list[str]:
        """Draw every sample to its end: the prompt and what follows it, one text each."""
        texts = [self.prompt] * self.count
        for i, piece in self.pieces:
            texts[i] += piece
            if on_piece is not None:
                on_piece(i, piece)
        return texts


def sample(
    checkpoint: Checkpoint,
    prompt: str,
    sampling: SampleConfig,
    stops: Sequence[str] = (),
    *,
    raw: bool = False,
) -> Samples:
    """Samples continuing `prompt` from a loaded checkpoint, with the weights in the dtype
    asked for: what the command line (and any other front end) asks for text. `raw`: bytes
    that are not UTF-8 come as surrogate escapes, for writing as the bytes themselves."""
    model = checkpoint.model.to(getattr(torch, sampling.dtype))
    if sampling.dtype == "bfloat16":
        warn_if_bf16_is_slow(next(model.parameters()).device, "sampling")
    block_size = checkpoint.config.model.block_size
    encoded = encode_prompt(checkpoint.tokenizer, prompt, block_size)
    pieces = stream_texts(
        model, checkpoint.tokenizer, encoded.ids, block_size, sampling, stops, raw=raw
    )
    return Samples(prompt, sampling.num_samples, pieces, encoded.was_cut)


def join_samples(texts: Sequence[str]) -> str:
    """Several samples as one text, each after a separator line."""
    return SAMPLE_SEPARATOR.join(texts) + "\n"
