"""The GPT: causality, initialisation, learning, the modern switches, the KV cache."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tinygpt.config import ModelConfig, fit_to_vocabulary
from tinygpt.generate import Decoder
from tinygpt.models import build_model, count_parameters, layers
from tinygpt.models.gpt import GPT, MLP, KVCache
from tinygpt.models.layers import (
    FastMatvecLinear,
    apply_rotary,
    relu_squared,
    two_column_product,
    two_columns_pay,
)
from tinygpt.models.lookback import ngram_log_frequencies

VOCAB = 65
SMALL = ModelConfig(arch="gpt", block_size=16, n_layer=2, n_head=4, n_embd=32)
SWITCHES = {
    "lecture": {},
    "rotary": {"rotary": True},
    "rmsnorm": {"norm": "rmsnorm"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"activation": "relu2"},
    "relu": {"activation": "relu"},
    "untied": {"tie_weights": False},
    "no_bias": {"bias": False},
    "embed_skip": {"embed_skip": True},
    "value_embeds": {"value_embeds": True},
    "softcap": {"logit_softcap": 15.0},
    "smear": {"smear": 3},
    "ngram": {"ngram": 3},
    "modern": {"rotary": True, "norm": "rmsnorm", "qk_norm": True, "activation": "relu2",
               "tie_weights": False, "bias": False},
}  # fmt: skip


def small_gpt(**switches: object) -> GPT:
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(SMALL, **switches), VOCAB)
    with torch.no_grad():  # both start at zero, where they would change nothing
        if model.smear_gates is not None:
            model.smear_gates.normal_()
        if model.ngram is not None:
            model.ngram.weight.normal_()
    return model


@pytest.mark.parametrize("name", SWITCHES)
def test_causality(name: str) -> None:
    model = small_gpt(**SWITCHES[name]).eval()
    idx = torch.randint(VOCAB, (2, 16))
    logits, _ = model(idx)
    for t in (0, 7, 14):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % VOCAB
        new_logits, _ = model(changed)
        assert torch.equal(new_logits[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(new_logits[:, t + 1], logits[:, t + 1])


def test_loss_at_initialisation_is_near_ln_vocab() -> None:
    model = small_gpt()
    _, loss = model(torch.randint(VOCAB, (8, 16)), torch.randint(VOCAB, (8, 16)))
    assert abs(loss.item() - math.log(VOCAB)) < 0.1  # std 0.02 weights: near-uniform logits


def test_gpt2_initialisation_and_weight_tying() -> None:
    model = GPT(ModelConfig(arch="gpt", n_layer=8, n_embd=256, n_head=4), VOCAB)
    assert model.lm_head.weight is model.wte.weight
    assert abs(model.blocks[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    expected = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].attn.c_proj.weight.std().item() - expected) < 0.001
    tied, untied = small_gpt(), small_gpt(tie_weights=False)
    assert count_parameters(untied) - count_parameters(tied) == VOCAB * 32


def test_rotary_has_no_position_table() -> None:
    assert small_gpt().wpe is not None and small_gpt(rotary=True).wpe is None


def test_rotary_scores_depend_on_the_distance_only() -> None:
    model = small_gpt(rotary=True)
    cos, sin = model.rotary_cos, model.rotary_sin  # (16, hs/2) each
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(query_pos: int, key_pos: int) -> float:
        rq = apply_rotary(q, cos[query_pos : query_pos + 1], sin[query_pos : query_pos + 1])
        rk = apply_rotary(k, cos[key_pos : key_pos + 1], sin[key_pos : key_pos + 1])
        return (rq * rk).sum().item()

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    assert apply_rotary(q, cos[:1], sin[:1]).equal(q)  # position 0: no rotation
    assert apply_rotary(q, cos[7:8], sin[7:8]).norm() == pytest.approx(q.norm().item())


@pytest.mark.parametrize("name", SWITCHES)
def test_each_switch_learns_one_batch(name: str) -> None:
    model = small_gpt(**SWITCHES[name])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(VOCAB, (4, 16), generator=generator)
    y = torch.randint(VOCAB, (4, 16), generator=generator)
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert math.isfinite(loss.item())
    assert loss.item() < 0.3 < first  # random targets: only memorising gets it this low


def test_zero_init_starts_uniform_and_learns() -> None:
    model = small_gpt(zero_init=True, tie_weights=False)
    assert all(not block.attn.c_proj.weight.any() for block in model.blocks)
    assert not model.lm_head.weight.any()
    idx = torch.randint(VOCAB, (4, 16))
    logits, loss = model(idx, idx)
    assert not logits.any() and loss.item() == pytest.approx(math.log(VOCAB))  # exactly uniform
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        model(idx, idx)[1].backward()
        optimizer.step()
    assert model(idx, idx)[1].item() < 0.5  # gradients reach the zeroed layers
    assert small_gpt(zero_init=True).wte.weight.any()  # a tied head keeps the embedding


def test_relu_squared_is_autograds_square_of_relu_bit_for_bit() -> None:
    x = torch.randn(4, 8, 64, requires_grad=True)
    grad = torch.randn(4, 8, 64)
    plain = torch.relu(x).square()
    (plain_grad,) = torch.autograd.grad(plain, x, grad)
    ours = relu_squared(x)
    (our_grad,) = torch.autograd.grad(ours, x, grad)
    assert torch.equal(ours, plain) and torch.equal(our_grad, plain_grad)
    assert (our_grad[x < 0] == 0).all()


def test_logit_softcap_bounds_the_logits() -> None:
    model = small_gpt(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)  # logits far beyond the cap without it
    logits, _ = model(torch.randint(VOCAB, (2, 16)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9


def test_embed_skip_and_value_embeds_add_few_parameters() -> None:
    base = count_parameters(small_gpt())
    assert count_parameters(small_gpt(embed_skip=True)) == base + 2 * SMALL.n_layer
    assert count_parameters(small_gpt(value_embeds=True)) == base + SMALL.n_layer * VOCAB * 32


def test_smear_adds_the_gated_embeddings_of_earlier_tokens() -> None:
    model = small_gpt(smear=2)
    idx = torch.randint(VOCAB, (2, 16))
    emb, (g1, g2) = model.wte(idx), model.smear_gates
    expected = emb.clone()
    expected[:, 1:] += g1 * emb[:, :-1]
    expected[:, 2:] += g2 * emb[:, :-2]  # none before the window's first token
    torch.testing.assert_close(model._embed(idx, 0, None), expected)


@pytest.mark.parametrize("n", [2, 3])
def test_ngram_table_adds_the_row_of_the_last_tokens(n: int) -> None:
    model = small_gpt(ngram=n, zero_init=True, tie_weights=False)  # a zero head: only the table
    table = model.ngram.weight
    assert table.shape == ((VOCAB if n == 2 else (VOCAB + 1) * VOCAB), VOCAB)
    idx = torch.randint(VOCAB, (2, 16))
    logits, _ = model(idx)
    for b, t in ((0, 0), (0, 5), (1, 15)):
        row = idx[b, t] if n == 2 else (idx[b, t - 1] + 1 if t else 0) * VOCAB + idx[b, t]
        torch.testing.assert_close(logits[b, t], table[row])


def test_ngram_log_frequencies_are_the_smoothed_counts() -> None:
    text = np.array([0, 1, 2] * 50 + [0, 1, 0], dtype=np.uint16)  # 'abc' over and over, one 'aba'
    bigram = ngram_log_frequencies(text, 2, 4)
    table = ngram_log_frequencies(text, 3, 4)
    assert bigram.shape == (4, 4) and table.shape == (5 * 4, 4)
    torch.testing.assert_close(bigram.exp().sum(1), torch.ones(4))  # each row a distribution
    torch.testing.assert_close(table.exp().sum(1), torch.ones(20))
    assert bigram[0].argmax() == 1 and bigram[1].argmax() == 2 and bigram[2].argmax() == 0
    # after 'b' comes 'c' 50 times and 'a' once; after the pair 'ab' too, but a pair seen
    # 51 times is sure of more than the smoothing says, so 'ab' -> 'c' beats 'b' -> 'c'
    ab, bc = (0 + 1) * 4 + 1, (1 + 1) * 4 + 2
    assert table[ab].argmax() == 2 and table[ab, 2] > bigram[1, 2]
    assert table[bc].argmax() == 0
    torch.testing.assert_close(table[:4], bigram)  # no token before: the bigram's rows
    never = (3 + 1) * 4 + 3  # the pair 'dd' never occurs: its row is its bigram's guess
    torch.testing.assert_close(table[never], bigram[3])
    assert torch.isfinite(table).all() and bigram[3, 3] > -math.inf  # nothing impossible


def test_warm_start_sets_the_table_from_counts_and_nothing_else() -> None:
    tokens = torch.randint(VOCAB, (5000,), generator=torch.Generator().manual_seed(0))
    tokens = np.asarray(tokens.numpy(), dtype=np.uint16)
    base = dataclasses.replace(SMALL, ngram=3, zero_init=True, tie_weights=False)
    for counts in (0.0, 0.5):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(base, ngram_counts=counts), VOCAB)
        before = {name: p.clone() for name, p in model.named_parameters()}
        model.warm_start(tokens)
        for name, param in model.named_parameters():
            if name != "ngram.weight" or not counts:
                assert torch.equal(param, before[name]), name
        expected = counts * ngram_log_frequencies(tokens, 3, VOCAB)
        torch.testing.assert_close(model.ngram.weight, expected)
        assert (model.uniform_loss() is None) == bool(counts)  # step 0 needs a pass now


def test_an_ngram_table_too_big_for_the_vocabulary_is_turned_off_with_a_note(capsys) -> None:
    pairs = dataclasses.replace(SMALL, ngram=3)
    assert fit_to_vocabulary(pairs, 512).ngram == 0  # a small BPE's pairs: too many
    counted = fit_to_vocabulary(dataclasses.replace(pairs, ngram_counts=0.5), 512)
    assert counted.ngram == 0 and counted.ngram_counts == 0  # its warm start goes with it
    assert "model.ngram 3 is off: its table would hold 134,479,872 parameters" in (
        capsys.readouterr().err
    )
    assert fit_to_vocabulary(dataclasses.replace(SMALL, ngram=2), 50257).ngram == 0
    assert fit_to_vocabulary(dataclasses.replace(SMALL, ngram=2), 2048).ngram == 2  # fits
    assert capsys.readouterr().err.count("\n") == 1  # one note, for the one turned off
    assert GPT(dataclasses.replace(SMALL, ngram=2), 2048).ngram.weight.shape == (2048, 2048)


def test_an_unknown_activation_is_refused_not_replaced() -> None:
    config = dataclasses.replace(SMALL)
    config.activation = "swish"  # type: ignore[assignment]  # past the config's own check
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(config)


@pytest.mark.parametrize("name", ["lecture", "rotary", "modern", "value_embeds", "smear", "ngram"])
def test_kv_cache_gives_the_same_logits(name: str) -> None:
    model = small_gpt(**SWITCHES[name]).eval()
    idx = torch.randint(VOCAB, (3, 16))
    full, _ = model(idx)
    cache = KVCache.empty(
        model.config, batch_size=3, device=torch.device("cpu"), dtype=torch.float32
    )
    prefill, _ = model(idx[:, :5], cache=cache)  # a prompt of 5 tokens at once
    steps = [prefill]
    for t in range(5, 12):  # then one token at a time
        steps.append(model(idx[:, t : t + 1], cache=cache)[0])
    steps.append(model(idx[:, 12:], cache=cache)[0])  # and a chunk after the start
    assert cache.pos == 16
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_one_row_product_matches_the_plain_one(bias: bool) -> None:
    torch.manual_seed(0)
    layer = FastMatvecLinear(384, 1536, bias=bias)  # big enough for the two-column product
    x = torch.randn(1, 1, 384)
    assert layer._one_row_on_cpu(x) and not layer._one_row_on_cpu(torch.randn(2, 1, 384))
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    two_columns = two_column_product(x, layer.weight, layer.bias)
    torch.testing.assert_close(two_columns, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # whichever it took
    two_columns_pay.cache_clear()
    choice = two_columns_pay(1536, 384)  # timed on this CPU, once a shape: it never flips
    assert all(two_columns_pay(1536, 384) is choice for _ in range(3))
    assert two_columns_pay.cache_info().hits == 3 and two_columns_pay.cache_info().misses == 1
    assert layer(x).shape == (1, 1, 1536) and layer(x[0]).shape == (1, 1536)


def test_kv_cache_decoding_of_a_wide_model_uses_the_one_row_product(monkeypatch) -> None:
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(SMALL, n_embd=256, n_head=4), VOCAB).eval()
    weights = {name: p.clone() for name, p in model.state_dict().items()}
    full, _ = model(idx := torch.randint(VOCAB, (1, 16)))
    assert type(model.lm_head) is torch.nn.Linear  # the model itself is plain
    Decoder(model, 16)  # decoding from the cache swaps the one-row product in
    fc = model.blocks[0].mlp.c_fc
    assert isinstance(fc, FastMatvecLinear) and fc.weight.numel() >= FastMatvecLinear.MIN_WEIGHTS
    assert model.lm_head.weight is model.wte.weight or not model.config.tie_weights
    assert all(torch.equal(p, weights[name]) for name, p in model.state_dict().items())
    calls = []
    monkeypatch.setattr(layers, "two_columns_pay", lambda out, inp: True)  # take it
    product = layers.two_column_product
    monkeypatch.setattr(layers, "two_column_product", lambda *a: calls.append(1) or product(*a))
    cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
    steps = [model(idx[:, :1], cache=cache)[0]]
    steps += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(1, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    assert calls  # the two-column product ran, and gave the same logits


def test_context_longer_than_block_size_is_refused() -> None:
    with pytest.raises(ValueError, match="exceed block_size"):
        small_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_build_model_picks_the_architecture() -> None:
    assert isinstance(build_model(SMALL, VOCAB), GPT)
    assert not isinstance(build_model(ModelConfig(arch="bigram"), VOCAB), GPT)
