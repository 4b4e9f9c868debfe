"""Seeing inside a trained model: attention maps, next-token probabilities, several runs'
curves in one picture, and TensorBoard logs that hold what metrics.jsonl holds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from tinygpt.checkpoint import load_checkpoint
from tinygpt.rundir import RunDir
from tinygpt.training.runs import train
from tinygpt.viz import plot
from tinygpt.viz.attention import attention_maps
from tinygpt.viz.plot import losses_plotted_meanwhile, plot_losses, plot_runs
from tinygpt.viz.probs import distribution, next_token

from .conftest import tiny_config


def quick_run(tmp_path: Path, name: str, model: dict, **train_values: object) -> Path:
    config = tiny_config(model, **{"steps": 20, **train_values})
    train(config, tmp_path / name, out=io.StringIO())
    return tmp_path / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, shakespeare_home: Path) -> dict[str, Path]:
    """A GPT with learned positions, one with rotary positions, and a bigram."""
    folder = tmp_path_factory.mktemp("viz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGPT_HOME", str(shakespeare_home))
        return {
            "learned": quick_run(folder, "learned", {}),
            "rotary": quick_run(folder, "rotary", {"rotary": True, "qk_norm": True}),
            "bigram": quick_run(folder, "bigram", {"arch": "bigram"}),
        }


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_attention_rows_are_causal_distributions(runs, kind: str) -> None:
    maps = attention_maps(load_checkpoint(runs[kind]), "ROMEO:\nWhat")
    layers, heads, T, _ = maps.weights.shape
    assert (layers, heads, T) == (2, 2, 11) and maps.tokens[:7] == [*"ROMEO:", "⏎"]
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(layers, heads, T))
    assert (maps.weights.triu(diagonal=1) == 0).all()


def test_attention_writes_a_png_and_a_page_that_needs_no_network(cli, runs, tmp_path) -> None:
    code, out, _ = cli("attention", runs["rotary"], "--prompt", "KING: Ay", "--out", tmp_path / "a")
    assert code == 0 and "2 layers x 2 heads over 8 tokens" in out
    assert f"\nwrote {tmp_path / 'a.png'}\nwrote {tmp_path / 'a.html'}\n" in out  # whole lines
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert "http" not in page and "<link" not in page and "src=" not in page
    tokens = json.loads(page.split("const data = ")[1].split(";\n")[0])["tokens"]
    assert tokens == ["K", "I", "N", "G", ":", "␣", "A", "y"]


def test_attention_and_probs_mistakes_are_one_line(cli, runs, tmp_path) -> None:
    code, _, err = cli("attention", runs["bigram"], "--prompt", "ab", "--out", tmp_path / "a")
    assert code == 2 and "has no attention to show" in err and err.count("\n") == 1
    code, _, err = cli("attention", runs["learned"], "--prompt", "é", "--out", tmp_path / "a")
    assert code == 2 and "'é' (U+00E9) at position 0 is not in the vocabulary" in err
    code, _, err = cli("attention", runs["learned"], "--prompt", "ab", "--out", tmp_path / "x/a")
    assert code == 2 and "no such directory" in err and not (tmp_path / "x").exists()
    code, _, err = cli("probs", runs["learned"], "--prompt", "ab", "--temperature", "-1")
    assert code == 2 and "temperature" in err
    long_prompt = "to be or not to be, " * 3
    code, out, err = cli(
        "attention", runs["learned"], "--prompt", long_prompt, "--out", tmp_path / "c"
    )
    assert code == 0 and "sees its last 16 tokens" in err and "over 16 tokens" in out


def test_next_token_probabilities(cli, runs, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(runs["learned"])
    rows, was_cut = next_token(checkpoint, "ROMEO", [0.0, 0.5, 1.0, 2.0], top_k=5)
    assert not was_cut
    for row in rows:
        assert row.probs.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert [p for _, p in row.top] == sorted((p for _, p in row.top), reverse=True)
    greedy, cool, warm = rows[0], rows[1], rows[3]
    logits, _ = checkpoint.model(torch.tensor([checkpoint.tokenizer.encode("ROMEO")]))
    best = checkpoint.tokenizer.decode([int(logits[0, -1].argmax())])
    assert greedy.top[0] == (best, 1.0) and cool.top[0][0] == best
    assert cool.top[0][1] > rows[2].top[0][1] > warm.top[0][1]  # heat flattens it
    torch.testing.assert_close(distribution(torch.tensor([1.0, 3.0]), 0), torch.tensor([0.0, 1.0]))
    code, out, _ = cli("probs", runs["learned"], "--prompt", "ROMEO", "--png", tmp_path / "p.png")
    assert code == 0 and out.startswith("temperature 1:\n    1. ")
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_plot_draws_one_labelled_curve_per_run(runs, tmp_path: Path) -> None:
    chosen = [runs["learned"], runs["rotary"]]
    by_step = plot_runs(chosen, tmp_path / "steps.png")
    assert list(by_step) == ["learned", "rotary"] and by_step["learned"] == [0, 10, 20]
    by_time = plot_runs(chosen, tmp_path / "time.png", x="time")
    metrics = [json.loads(line) for line in RunDir(runs["rotary"]).metrics.open()]
    assert by_time["rotary"] == [m["elapsed_s"] for m in metrics if "val_loss" in m]
    for name in ("steps.png", "time.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_plot_from_the_command_line(cli, runs, tmp_path: Path) -> None:
    code, out, _ = cli("plot", runs["learned"], runs["bigram"], "--out", tmp_path / "p.png")
    assert code == 0 and "2 runs against step" in out
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'p.png'}"
    code, _, err = cli("plot", tmp_path, "--out", tmp_path / "q.png")
    assert code == 2 and "not a tinygpt run directory" in err


def test_tensorboard_events_hold_the_metrics(shakespeare, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = quick_run(tmp_path, "run", {}, tensorboard=str(tmp_path / "tb"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    metrics = [json.loads(line) for line in RunDir(run_dir).metrics.open()]
    for name in ("loss", "val_loss", "train_loss", "grad_norm"):
        logged = {m["step"]: m[name] for m in metrics if name in m}
        board = {e.step: e.value for e in events.Scalars(name)}
        assert logged and board.keys() == logged.keys()
        assert all(board[s] == pytest.approx(logged[s], rel=1e-5) for s in logged)


def touches_the_border(png: Path) -> bool:
    """Whether anything but the white background lies on the picture's outermost pixels."""
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]  # (H, W, 3) in 0..1
    edges = [pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]
    return any(bool((edge < 0.98).any()) for edge in edges)


@pytest.mark.parametrize(("layers", "heads", "tokens"), [(1, 1, 2), (2, 2, 13), (6, 6, 64)])
def test_attention_pictures_keep_everything_inside(tmp_path, layers, heads, tokens) -> None:
    """From a one-head model to gpu-fast's 6 x 6, with a short or a long prompt."""
    from tinygpt.viz.attention import AttentionMaps, save_png

    weights = torch.rand(layers, heads, tokens, tokens).tril()
    maps = AttentionMaps([chr(65 + t % 26) for t in range(tokens)], weights, False)
    save_png(maps, tmp_path / "a.png")
    assert not touches_the_border(tmp_path / "a.png")


@pytest.mark.parametrize("temperatures", [[1.0], [0.0, 0.5, 1.0, 2.0]])
def test_probs_pictures_keep_everything_inside(tmp_path, temperatures) -> None:
    from tinygpt.viz.probs import NextToken, save_png

    probs = torch.softmax(torch.randn(65), dim=0)
    top = [(chr(97 + i), float(p)) for i, p in enumerate(probs[:10])]
    rows = [NextToken(t, top, probs) for t in temperatures]
    save_png(
        rows, "KING RICHARD:\nO, my lord, a long prompt that runs on and on", tmp_path / "p.png"
    )
    assert not touches_the_border(tmp_path / "p.png")


def test_loss_plots_keep_a_60_character_run_name_inside(runs, tmp_path: Path) -> None:
    import shutil

    long_name = tmp_path / ("r" * 60)
    shutil.copytree(runs["learned"], long_name)
    plot_runs([runs["bigram"], long_name], tmp_path / "several.png")
    plot_losses(RunDir(long_name).metrics, tmp_path / "one.png")
    assert not touches_the_border(tmp_path / "several.png")
    assert not touches_the_border(tmp_path / "one.png")


def _recorded_when_drawn_here(calls: list[Path]):
    def record(metrics: Path, png: Path) -> None:
        calls.append(png)
        plot_losses(metrics, png)

    return record


def test_the_loss_plot_is_drawn_by_a_child_while_the_body_runs(runs, tmp_path, monkeypatch):
    drawn_here: list[Path] = []
    monkeypatch.setattr(plot, "plot_losses", _recorded_when_drawn_here(drawn_here))
    png = tmp_path / "loss.png"
    with losses_plotted_meanwhile(RunDir(runs["learned"]).metrics, png):
        pass
    assert png.read_bytes().startswith(b"\x89PNG") and drawn_here == []
    assert list(tmp_path.iterdir()) == [png]  # nothing half-written beside it


@pytest.mark.parametrize("python", ["/bin/false", "/no/such/python"])
def test_a_loss_plot_the_child_does_not_draw_is_drawn_here(runs, tmp_path, monkeypatch, python):
    drawn_here: list[Path] = []
    monkeypatch.setattr(plot, "plot_losses", _recorded_when_drawn_here(drawn_here))
    monkeypatch.setattr(plot.sys, "executable", python)
    png = tmp_path / "loss.png"
    with losses_plotted_meanwhile(RunDir(runs["learned"]).metrics, png):
        assert not png.exists()
    assert drawn_here == [png] and png.read_bytes().startswith(b"\x89PNG")


def test_a_body_that_raises_waits_for_the_child_and_draws_nothing_itself(
    runs, tmp_path, monkeypatch
):
    drawn_here: list[Path] = []
    monkeypatch.setattr(plot, "plot_losses", _recorded_when_drawn_here(drawn_here))
    png = tmp_path / "loss.png"
    with (
        pytest.raises(KeyboardInterrupt),
        losses_plotted_meanwhile(RunDir(runs["learned"]).metrics, png),
    ):
        raise KeyboardInterrupt
    assert drawn_here == [] and png.read_bytes().startswith(b"\x89PNG")
    assert list(tmp_path.iterdir()) == [png]
