"""Generation: KV cache equals recomputation, sampling controls, seeds, batches, stops."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinygpt.config import ModelConfig, SampleConfig
from tinygpt.errors import UserError
from tinygpt.generate import (
    Decoder,
    StopScanner,
    decode_rows,
    encode_prompt,
    filter_logits,
    generate,
    stream_text,
    stream_texts,
)
from tinygpt.models.bigram import BigramLanguageModel
from tinygpt.models.gpt import GPT
from tinygpt.tokenizers import CharTokenizer

TOKENIZER = CharTokenizer.from_text("\nabcdefghijklmnopqrstuvwxyz ")
V = TOKENIZER.vocab_size
BLOCK = 16


def bigram() -> BigramLanguageModel:
    torch.manual_seed(0)
    return BigramLanguageModel(V)


def gpt(**switches: object) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(arch="gpt", block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    return GPT(dataclasses.replace(config, **switches), V).eval()


def tokens(model, prompt: list[int], sampling: SampleConfig) -> list[list[int]]:
    idx = torch.tensor([prompt] * sampling.num_samples)
    steps = list(generate(model, idx, BLOCK, sampling))
    return torch.stack(steps, dim=1).tolist()


@pytest.mark.parametrize("window", ["exact", "shift"])
@pytest.mark.parametrize("switches", [{}, {"rotary": True}, {"norm": "rmsnorm", "qk_norm": True}])
def test_cache_logits_match_recomputation_across_the_full_context(switches, window) -> None:
    model = gpt(**switches)
    cached = Decoder(model, BLOCK, use_cache=True, window=window)
    plain = Decoder(model, BLOCK, use_cache=False, window=window)
    idx = torch.randint(V, (3, 5), generator=torch.Generator().manual_seed(0))
    a, b = cached.start(idx), plain.start(idx)
    for step in range(3 * BLOCK):  # well past the point where the context fills
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"step {step}")
        token = a.argmax(dim=-1)
        a, b = cached.step(token), plain.step(token)
    assert cached.cache is not None and plain.cache is None


@pytest.mark.parametrize("switches", [{}, {"rotary": True}])
def test_the_shift_window_conditions_on_the_tokens_since_its_last_shift(switches) -> None:
    """Past the context, `shift` keeps the window's last half and fills it up again: each
    token's logits are the model's on exactly that window, recomputed from scratch."""
    model = gpt(**switches)
    shifted = Decoder(model, BLOCK, use_cache=True, window="shift")
    history = torch.randint(V, (2, 5), generator=torch.Generator().manual_seed(1))
    logits, seen = shifted.start(history), 5
    lengths = []
    for _ in range(3 * BLOCK):
        with torch.no_grad():
            expected = model(history[:, -seen:])[0][:, -1]
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
        lengths.append(seen)
        token = logits.argmax(dim=-1)
        history = torch.cat((history, token[:, None]), dim=1)
        seen = seen + 1 if seen < BLOCK else BLOCK // 2
        logits = shifted.step(token)
    half_to_full = list(range(BLOCK // 2, BLOCK + 1))  # 8 .. 16 tokens seen, then a shift
    assert lengths == list(range(5, BLOCK + 1)) + half_to_full * 4


def test_the_shift_window_is_the_exact_one_until_the_context_fills() -> None:
    model = gpt()
    exact = SampleConfig(max_new_tokens=BLOCK - 3, temperature=0)
    shift = dataclasses.replace(exact, window="shift")
    assert tokens(model, [1, 2, 3], exact) == tokens(model, [1, 2, 3], shift)
    longer = dataclasses.replace(shift, max_new_tokens=3 * BLOCK)
    assert tokens(model, [1, 2, 3], longer) == tokens(
        model, [1, 2, 3], dataclasses.replace(longer, use_cache=False)
    )


@pytest.mark.parametrize("switches", [{}, {"rotary": True}])
@pytest.mark.parametrize("window", ["exact", "shift"])
def test_greedy_tokens_are_identical_with_and_without_cache(switches, window) -> None:
    model = gpt(**switches)
    greedy = SampleConfig(max_new_tokens=3 * BLOCK, temperature=0, window=window)
    without = dataclasses.replace(greedy, use_cache=False)
    assert tokens(model, [1, 2, 3], greedy) == tokens(model, [1, 2, 3], without)


def test_temperature_zero_is_argmax() -> None:
    model = bigram()
    out = tokens(model, [3], SampleConfig(max_new_tokens=10, temperature=0))[0]
    expected, last = [], 3
    for _ in range(10):
        last = int(model.token_embedding_table.weight[last].argmax())
        expected.append(last)
    assert out == expected


def test_top_k_one_is_greedy() -> None:
    model = gpt()
    greedy = tokens(model, [5], SampleConfig(max_new_tokens=40, temperature=0))
    for seed in (1, 2):
        top1 = SampleConfig(max_new_tokens=40, temperature=1.5, top_k=1, seed=seed)
        assert tokens(model, [5], top1) == greedy


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # by rank: 1, 3, 0, 2
    logits = probs.log()

    def kept(top_p: float) -> set[int]:
        filtered = filter_logits(logits, top_k=0, top_p=top_p)
        return set(torch.nonzero(filtered[0].isfinite()).flatten().tolist())

    assert kept(0.4) == {1}
    assert kept(0.5) == {1}  # 0.5 already reaches 0.5
    assert kept(0.51) == {1, 3}
    assert kept(0.8) == {1, 3}
    assert kept(0.81) == {0, 1, 3}
    assert kept(1.0) == {0, 1, 2, 3}


def test_top_k_keeps_the_k_best() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = filter_logits(logits, top_k=2, top_p=1.0)[0].isfinite()
    assert kept.tolist() == [False, True, False, True, False]


def test_same_seed_same_text_other_seed_other_text() -> None:
    model = gpt()

    def text(seed: int) -> str:
        return "".join(stream_text(model, TOKENIZER, "ab", BLOCK, SampleConfig(80, seed=seed)))

    assert text(1) == text(1) != text(2)
    assert len(text(1)) == 80


def test_batch_equals_one_at_a_time() -> None:
    model = gpt()
    batch = tokens(model, [4, 5], SampleConfig(max_new_tokens=40, num_samples=3, seed=10))
    for i in range(3):
        alone = tokens(model, [4, 5], SampleConfig(max_new_tokens=40, seed=10 + i))
        assert batch[i] == alone[0]
    assert batch[0] != batch[1]


def test_stop_strings_end_a_sample_and_are_not_shown() -> None:
    scanner = StopScanner(["\nROMEO", "!"])
    shown = [scanner.feed(piece) for piece in ["ab", "c\nR", "OM", "EO: hi"]]
    assert "".join(shown) == "abc" and scanner.stopped
    scanner = StopScanner(["xyz"])
    shown = [scanner.feed(piece) for piece in "abxy"] + [scanner.flush()]
    assert "".join(shown) == "abxy" and not scanner.stopped
    with pytest.raises(UserError, match="must not be empty"):
        StopScanner([""])


def test_stream_stops_each_sample_on_its_own() -> None:
    model = bigram()
    sampling = SampleConfig(max_new_tokens=200, num_samples=2, seed=3)
    full = {0: "", 1: ""}
    for i, piece in stream_texts(model, TOKENIZER, [1], BLOCK, sampling):
        full[i] += piece
    stops = {0: "", 1: ""}
    for i, piece in stream_texts(model, TOKENIZER, [1], BLOCK, sampling, stops=["e"]):
        stops[i] += piece
    for i in (0, 1):
        assert stops[i] == full[i].split("e")[0]


def test_prompts() -> None:
    empty = encode_prompt(TOKENIZER, "", BLOCK)
    assert (empty.ids, empty.length, empty.was_cut) == ([0], 1, False)  # the start token
    long = encode_prompt(TOKENIZER, "abcdefghijklmnopqrstuvwxyz", BLOCK)
    ids, cut = long.ids, long.was_cut
    assert cut and ids == TOKENIZER.encode("klmnopqrstuvwxyz") and long.length == 26
    with pytest.raises(UserError, match=r"'!' \(U\+0021\) at position 3"):
        encode_prompt(TOKENIZER, "abc!", BLOCK)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_new_tokens": 0}, "max new tokens must be at least 1"),
        ({"temperature": -0.5}, "temperature must be 0"),
        ({"temperature": float("nan")}, "temperature must be 0"),
        ({"top_k": -1}, "top-k must be at least 1"),
        ({"top_p": 0.0}, r"top-p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top-p must be in \(0, 1\]"),
        ({"num_samples": 0}, "number of samples"),
    ],
)
def test_bad_settings_are_clear_errors(values: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        SampleConfig(**values)


def test_decode_rows_cuts_each_row_at_its_stop_and_says_why_it_ended() -> None:
    rows = ["ab cd ef", "abcdefgh"]  # row 0 meets the stop " c"; row 1 runs out
    steps = [torch.tensor([TOKENIZER.encode(r)[i] for r in rows]) for i in range(len(rows[0]))]
    pieces = list(decode_rows(iter(steps), TOKENIZER, stops=[" c"]))
    text = {row: "".join(p.text for p in pieces if p.row == row) for row in (0, 1)}
    assert text == {0: "ab", 1: "abcdefgh"}
    ends = {p.row: (p.finish, p.tokens) for p in pieces if p.finish}
    assert ends == {0: ("stop", 4), 1: ("length", 8)}  # tokens read, the stop's included
    for row in (0, 1):  # a row's last piece alone says it ended
        finishes = [p.finish for p in pieces if p.row == row]
        assert finishes[-1] and not any(finishes[:-1])
    with pytest.raises(UserError, match="must not be empty"):
        decode_rows(iter(steps), TOKENIZER, stops=[""])  # at once, not at the first token


MODERN = {"rotary": True, "smear": 3, "ngram": 3, "value_embeds": True, "embed_skip": True}


@pytest.mark.parametrize("switches", [{}, MODERN], ids=["learned-positions", "modern"])
def test_a_ragged_batch_decodes_each_row_as_if_it_were_alone(switches) -> None:
    """Rows at different lengths (a server's requests) share one step, each at its own
    position, and get the logits that decoding it alone gives, its earlier tokens (smear,
    the pair table) included: a row can join from a prompt of 1 token or leave any time."""
    model = gpt(**switches)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    alone = [Decoder(model, BLOCK) for _ in prompts]
    logits = [d.start(torch.tensor([p])) for d, p in zip(alone, prompts, strict=True)]
    batch = model.new_cache(4).make_ragged()
    for row, decoder in enumerate(alone):
        assert decoder.cache is not None
        batch.copy_row(row, decoder.cache, 0)
    active = batch.first_rows(3)
    for _ in range(6):
        token = torch.cat([x.argmax(dim=-1) for x in logits])  # (3,)
        together, _ = model(token[:, None], cache=active)  # (3, 1, V): one step for all
        logits = [d.step(token[i : i + 1]) for i, d in enumerate(alone)]
        for i, expected in enumerate(logits):
            torch.testing.assert_close(together[i, -1], expected[0], rtol=1e-5, atol=1e-5)
    assert batch.lengths is not None and batch.lengths[:3].tolist() == [13, 7, 9]
    # a row leaves: the last takes its place and goes on as before
    batch.copy_row(0, batch, 2)
    active = batch.first_rows(2)
    token = torch.stack([logits[2][0].argmax(), logits[1][0].argmax()])
    together, _ = model(token[:, None], cache=active)
    for row, i in enumerate([2, 1]):
        expected = alone[i].step(token[row : row + 1])
        torch.testing.assert_close(together[row, -1], expected[0], rtol=1e-5, atol=1e-5)
