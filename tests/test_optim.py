"""Learning-rate schedules at their edges, the weight-decay groups, Muon's iteration, and the
optimizers against torch's own (the same updates, state dicts that load either way)."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from tinygpt.config import ModelConfig, OptimConfig
from tinygpt.models.gpt import GPT
from tinygpt.training.optim import (
    AdamW,
    BatchedMuon,
    LrSchedule,
    lr_scale_at,
    make_optimizer,
    newton_schulz_on_gram,
    orthogonalise,
    parameter_groups,
)


def lr_at(step: int, config: OptimConfig, total_steps: int) -> float:
    """The AdamW learning rate of a step: the peak times the schedule's scale."""
    scale = lr_scale_at(step, config, total_steps)
    assert 0.0 <= scale <= 1.0
    return config.lr * scale


def test_warmup_rises_linearly_to_the_peak() -> None:
    config = OptimConfig(lr=1e-3, warmup_steps=100, schedule="constant")
    assert lr_at(0, config, 1000) == pytest.approx(1e-5)
    assert lr_at(49, config, 1000) == pytest.approx(5e-4)
    assert lr_at(99, config, 1000) == pytest.approx(1e-3)
    assert lr_at(100, config, 1000) == lr_at(999, config, 1000) == 1e-3


def test_cosine_decays_from_peak_to_min_lr() -> None:
    config = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine")
    assert lr_at(100, config, 2000) == pytest.approx(1e-3)
    assert lr_at(1050, config, 2000) == pytest.approx(5.5e-4)  # half way: the mean
    assert lr_at(2000, config, 2000) == pytest.approx(1e-4)
    assert lr_at(5000, config, 2000) == pytest.approx(1e-4)  # past the end: stays at min
    values = [lr_at(s, config, 2000) for s in range(100, 2001)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_warmup_stable_decay() -> None:
    config = OptimConfig(lr=3e-3, min_lr=0.0, warmup_steps=50, schedule="wsd", decay_fraction=0.2)
    assert lr_at(0, config, 1000) == pytest.approx(3e-3 / 50)
    assert lr_at(50, config, 1000) == lr_at(799, config, 1000) == 3e-3  # stable
    assert lr_at(800, config, 1000) == pytest.approx(3e-3)  # decay starts
    assert lr_at(900, config, 1000) == pytest.approx(1.5e-3)
    assert lr_at(1000, config, 1000) == pytest.approx(0.0)


def test_no_warmup_starts_at_the_peak() -> None:
    config = OptimConfig(lr=2e-3, warmup_steps=0, schedule="cosine", min_lr=2e-4)
    assert lr_at(0, config, 10) == pytest.approx(2e-3)


def test_decay_applies_to_matrices_only() -> None:
    model = GPT(ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=8, block_size=4), 10)
    decay, no_decay = parameter_groups(list(model.parameters()), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["params"]
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == total


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    config = ModelConfig(arch="gpt", n_layer=2, n_head=2, n_embd=8, block_size=4)
    model = GPT(dataclasses.replace(config, tie_weights=False, embed_skip=True), 10)
    pair = make_optimizer(model, OptimConfig(optimizer="muon"), torch.device("cpu"))
    muon, adamw = pair.optimizers
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[i] for i in in_muon} == {
        f"blocks.{i}.{m}.weight" for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }  # fmt: skip
    assert in_muon.isdisjoint(in_adamw) and len(in_muon | in_adamw) == len(names)
    schedule = LrSchedule(pair, OptimConfig(optimizer="muon", warmup_steps=10), 100)
    assert schedule.set_for(4) == pytest.approx(0.5)  # half way up the warmup
    muon_rates = [g["lr"] for g in muon.param_groups]
    adamw_rates = [g["lr"] for g in adamw.param_groups]
    assert muon_rates == pytest.approx([0.01])  # each group at half its own peak
    assert adamw_rates == pytest.approx([5e-4, 5e-4])


def test_muon_pair_steps_and_restores_its_state() -> None:
    config = ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=8, block_size=4)
    optim = OptimConfig(optimizer="muon")
    torch.manual_seed(0)
    model = GPT(config, 10)
    pair = make_optimizer(model, optim, torch.device("cpu"))
    idx = torch.randint(10, (2, 4))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        pair.zero_grad()
        model(idx, idx)[1].backward()
        pair.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    twin = GPT(config, 10)
    twin.load_state_dict(model.state_dict())
    restored = make_optimizer(twin, optim, torch.device("cpu"))
    restored.load_state_dict(copy.deepcopy(pair.state_dict()))  # as if from disk
    for m in (model, twin):  # one more step from the same state: the same weights
        opt = pair if m is model else restored
        opt.zero_grad()
        m(idx, idx)[1].backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's Muon's


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_the_gram_iteration_takes_the_plain_iterations_steps(steps: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16, 48, dtype=torch.float64)
    x = x / x.norm(dim=(-2, -1), keepdim=True)
    a, b, c = COEFFICIENTS
    plain = x
    for _ in range(steps):  # the iteration as its papers write it
        gram = plain @ plain.mT
        plain = a * plain + (b * gram + c * gram @ gram) @ plain
    on_gram = newton_schulz_on_gram(x, coefficients=COEFFICIENTS, steps=steps)
    torch.testing.assert_close(on_gram, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 40, 16), (2, 16, 40), (2, 16, 16), (2, 24, 16)])
def test_orthogonalise_in_float32_agrees_with_float64_whichever_way_it_iterates(shape) -> None:
    torch.manual_seed(0)
    updates = torch.randn(*shape)
    settings = {"coefficients": COEFFICIENTS, "steps": 5, "eps": 1e-7}
    ours = orthogonalise(updates, dtype=torch.float32, **settings)
    exact = orthogonalise(updates.double(), dtype=torch.float64, **settings)  # the plain way
    assert ours.dtype == torch.float32 and ours.shape == shape
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-5)
    if shape[-1] != shape[-2]:  # what it is for: an oblong random matrix's singular values
        singular_values = torch.linalg.svdvals(exact)  # pulled into about [0.7, 1.2]
        assert singular_values.min() > 0.5 and singular_values.max() < 1.3


def test_batched_muon_matches_torch_muon() -> None:
    torch.manual_seed(0)
    shapes = [(24, 8), (24, 8), (8, 8), (8, 32), (8, 32)]
    ours = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    settings = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.8}
    batched, reference = BatchedMuon(ours, **settings), torch.optim.Muon(theirs, **settings)
    for _ in range(3):
        grads = [torch.randn(*s) for s in shapes]
        for params, optimizer in ((ours, batched), (theirs, reference)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)  # bfloat16 iterations
    assert batched.state[ours[0]]["momentum_buffer"].shape == (24, 8)


def test_adamw_uses_the_fused_kernel_on_a_cpu_and_matches_the_loop() -> None:
    config = ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=8, block_size=4)
    torch.manual_seed(0)
    model = GPT(config, 10)
    twin = copy.deepcopy(model)
    optim = OptimConfig()
    fused = make_optimizer(model, optim, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    groups = parameter_groups(list(twin.parameters()), optim.weight_decay)
    plain = torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2))
    idx = torch.randint(10, (2, 4))
    for m, opt in ((model, fused), (twin, plain)):
        for _ in range(3):
            opt.zero_grad()
            m(idx, idx)[1].backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the same update, one kernel


def take_steps(params, optimizer, grads) -> None:
    for g in grads:
        for p, grad in zip(params, g, strict=True):
            p.grad = grad.clone()
        optimizer.step()


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_state_dicts_load_into_and_from_torchs_adamw(fused: bool) -> None:
    """Checkpoints written while tinygpt used torch.optim.AdamW resume, and the other way:
    the same state dict layout, and the same next steps."""
    torch.manual_seed(0)
    shapes = [(6, 4), (4,), (3, 5)]
    grads = [[torch.randn(*s) for s in shapes] for _ in range(4)]
    start = [torch.randn(*s) for s in shapes]

    def params() -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(t.clone()) for t in start]

    def groups(ps):
        return [{"params": ps[::2], "weight_decay": 0.1}, {"params": ps[1:2], "weight_decay": 0.0}]

    settings = {"lr": 1e-2, "betas": (0.9, 0.95), "fused": fused}
    ours, theirs = params(), params()
    adamw, reference = (
        AdamW(groups(ours), **settings),
        torch.optim.AdamW(groups(theirs), **settings),
    )
    take_steps(ours, adamw, grads[:2])
    take_steps(theirs, reference, grads[:2])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # torch's own update function
    ours_next, theirs_next = params(), params()
    from_torch = AdamW(groups(ours_next), **settings)
    from_torch.load_state_dict(copy.deepcopy(reference.state_dict()))
    to_torch = torch.optim.AdamW(groups(theirs_next), **settings)
    to_torch.load_state_dict(copy.deepcopy(adamw.state_dict()))
    with torch.no_grad():
        for p, q, a in zip(ours_next, theirs_next, ours, strict=True):
            p.copy_(a), q.copy_(a)
    for ps, opt in ((ours, adamw), (ours_next, from_torch), (theirs_next, to_torch)):
        take_steps(ps, opt, grads[2:])
    for a, b, c in zip(ours, ours_next, theirs_next, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


def test_muon_state_dicts_load_into_and_from_torchs_muon() -> None:
    torch.manual_seed(0)
    shapes = [(8, 4), (8, 4), (4, 4)]
    grads = [[torch.randn(*s) for s in shapes] for _ in range(2)]
    settings = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.8}
    ours = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    muon, reference = BatchedMuon(ours, **settings), torch.optim.Muon(theirs, **settings)
    take_steps(ours, muon, grads)
    take_steps(theirs, reference, grads)
    assert muon.state_dict()["param_groups"] == reference.state_dict()["param_groups"]
    restored = BatchedMuon([torch.nn.Parameter(p.detach().clone()) for p in ours], **settings)
    restored.load_state_dict(copy.deepcopy(reference.state_dict()))
    to_torch = torch.optim.Muon([torch.nn.Parameter(p.detach().clone()) for p in ours], **settings)
    to_torch.load_state_dict(copy.deepcopy(muon.state_dict()))
    for p, q, r, t in zip(
        ours, restored.parameters(), theirs, to_torch.param_groups[0]["params"], strict=True
    ):
        buffer = muon.state[p]["momentum_buffer"]
        assert torch.equal(
            restored.state[q]["momentum_buffer"], reference.state[r]["momentum_buffer"]
        )
        assert torch.equal(to_torch.state[t]["momentum_buffer"], buffer)
    with pytest.raises(ValueError, match="other parameter groups"):
        BatchedMuon(ours[:2], **settings).load_state_dict(reference.state_dict())
    with pytest.raises(ValueError, match="2-D"):
        BatchedMuon([torch.nn.Parameter(torch.zeros(3))])
