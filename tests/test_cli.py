"""The command line: help, the run directory, sampling, inspect, and every user error."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors

from tinygpt.config import RunConfig, resolve, section_types

from .conftest import SHORT


def test_help_lists_every_option_with_its_default(cli) -> None:
    code, out, _ = cli("train", "--preset", "lecture", "--help")
    assert code == 0
    flat = " ".join(out.split())
    lecture = resolve("lecture")
    for section, section_cls in section_types().items():
        for f in dataclasses.fields(section_cls):
            value = getattr(getattr(lecture, section), f.name)
            assert f"--{section}.{f.name}" in flat
            assert f"(default: {value!r})" in flat
    for flag in ("--preset", "--config", "--data", "--out", "--steps", "--seed", "--overwrite"):
        assert flag in flat
    for command in ("data", "inspect", "sample"):
        assert cli(command, "--help")[0] == 0


def test_train_writes_a_complete_run_directory(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert RunConfig.from_dict(config).train.steps == 60
    assert config["optim"]["lr"] == 0.05 and config["model"]["block_size"] == 8
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert all("step" in line and "elapsed_s" in line for line in lines)
    evals = [line for line in lines if "val_loss" in line]
    assert [line["step"] for line in evals] == [0, 20, 40, 60]
    assert all("train_loss" in line for line in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert any("tokens_per_s" in line for line in lines)
    latest = run_dir / "checkpoints" / "step-00000060"
    with safetensors.safe_open(latest / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("token_embedding_table.weight").shape == (65, 65)


def test_train_reports_progress_and_prints_a_sample(cli, shakespeare, tmp_path: Path) -> None:
    code, out, _ = cli("train", *SHORT, "--train.sample_tokens", "40", "--out", tmp_path / "r")
    assert code == 0
    assert "4,225 parameters" in out
    assert "step 60: train loss" in out and "--- sample ---" in out
    assert "sample with: tinygpt sample" in out


def test_default_run_directory_is_named_after_preset(cli, shakespeare, tmp_path: Path) -> None:
    code, _, _ = cli("train", *SHORT, "--train.sample_tokens", "0")
    assert code == 0
    (made,) = (tmp_path / "runs").iterdir()
    assert made.name.startswith("bigram-") and (made / "config.json").is_file()


def test_existing_run_directory_needs_overwrite(cli, shakespeare, tmp_path: Path) -> None:
    args = ("train", *SHORT, "--train.sample_tokens", "0", "--out", tmp_path / "r")
    assert cli(*args)[0] == 0
    code, _, err = cli(*args)
    assert code == 2 and "already exists" in err
    assert cli(*args, "--overwrite")[0] == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    code, _, err = cli("train", *SHORT, "--out", tmp_path / "mine", "--overwrite")
    assert code == 2 and "not a tinygpt run directory" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_sample_is_reproducible_for_a_seed(cli, run_dir: Path, tmp_path: Path) -> None:
    def sample(*extra: str) -> str:
        code, out, _ = cli("sample", run_dir, "--max-new-tokens", "100", *extra)
        assert code == 0
        return out

    assert sample("--seed", "3") == sample("--seed", "3") != sample("--seed", "4")
    assert sample("--temperature", "0", "--seed", "1") == sample(
        "--temperature", "0", "--seed", "2"
    )
    text = sample("--prompt", "ROMEO:", "--output", str(tmp_path / "s.txt"))
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 100 + 1
    assert (tmp_path / "s.txt").read_text(encoding="utf-8") == text


def test_inspect_walks_through_the_notebook(cli, shakespeare) -> None:
    code, out, _ = cli("inspect")
    assert code == 0
    for expected in [
        "1,115,394 characters",
        "First Citizen:",
        "vocab_size = 65",
        "encode('hii there') = [46, 47, 47, 1, 58, 46, 43, 56, 43]",
        "data.shape = (1115394,), data.dtype = torch.int64",
        "train: 1,003,854 tokens, val: 111,540 tokens",
        "when input is [18] the target: 47",
        "when input is [18, 47, 56, 57, 58, 1, 15, 47] the target: 58",
        "inputs: shape (4, 8)",
        "[24, 43, 58,  5, 57,  1, 46, 43]",
        "when input is [24, 43, 58] the target: 5",
    ]:
        assert expected in out


def test_inspect_any_corpus(cli, text_file) -> None:
    code, out, _ = cli("inspect", "--data", text_file("春眠不觉晓，处处闻啼鸟。\n" * 30))
    assert code == 0 and "vocab_size = 12" in out and "encode('春眠不觉晓，处处闻啼鸟。')" in out


def bad_inputs(tmp: Path) -> list[tuple[str, list[str], str]]:
    tmp.mkdir()
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "short.txt").write_text("too short")
    (tmp / "latin1.txt").write_bytes(b"na\xefve")
    (tmp / "not-a-run").mkdir()
    return [
        ("missing file", ["train", "--data", str(tmp / "nope.txt")], "no such file"),
        ("empty file", ["train", "--data", str(tmp / "empty.txt")], "is empty"),
        ("short corpus", ["train", "--data", str(tmp / "short.txt")], "fewer than block_size + 1"),
        ("not UTF-8", ["train", "--data", str(tmp / "latin1.txt")], "not UTF-8"),
        ("unknown preset", ["train", "--preset", "gpt9"], "unknown value 'gpt9'"),
        ("unknown corpus", ["data", "enwik8"], "unknown corpus 'enwik8'"),
        ("unknown option", ["train", "--model.n_layers", "4"], "unrecognized arguments"),
        ("abbreviated option", ["train", "--ste", "4"], "unrecognized arguments"),
        ("unknown command", ["fly"], "unknown command 'fly'"),
        ("non-numeric", ["train", "--steps", "many"], "invalid int value: 'many'"),
        ("out of range", ["train", "--model.block_size", "0"], "block_size must be at least 1"),
        ("negative lr", ["train", "--optim.lr", "-1"], "optim.lr must be positive"),
        ("bad bool-ish", ["inspect", "--block-size", "x"], "invalid int value"),
        ("missing config", ["train", "--config", str(tmp / "c.toml")], "config file not found"),
        ("no such run", ["sample", str(tmp / "nope")], "no such run directory"),
        ("not a run", ["sample", str(tmp / "not-a-run")], "not a tinygpt run directory"),
        ("missing --from", ["data", "tinyshakespeare", "--from", str(tmp / "x")], "no such file"),
    ]


def test_every_bad_input_is_one_line_and_exit_2(cli, shakespeare, tmp_path: Path) -> None:
    before = set(Path.cwd().rglob("*"))
    for label, argv, message in bad_inputs(tmp_path / "inputs"):
        code, _, err = cli(*argv)
        assert code == 2, label
        assert err.count("\n") == 1 and err.startswith("tinygpt: error: "), (label, err)
        assert message in err, (label, err)
    created = {p for p in set(Path.cwd().rglob("*")) - before if "inputs" not in p.parts}
    assert not created  # no run directory or partial file left behind


def test_bad_sampling_input_is_one_line_and_exit_2(cli, run_dir: Path, tmp_path: Path) -> None:
    cases = [
        (["--prompt", "Zoë"], "'ë' (U+00EB) at position 2"),
        (["--max-new-tokens", "0"], "max new tokens must be at least 1"),
        (["--max-new-tokens", "-3"], "max new tokens must be at least 1"),
        (["--temperature", "-1"], "temperature must be 0"),
        (["--top-k", "-1"], "top-k must be at least 1"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["--num-samples", "0"], "number of samples"),
        (["--dtype", "float16"], "unknown sampling dtype 'float16'"),
        (["--stop", ""], "stop string must not be empty"),
        (["--prompt-file", str(tmp_path / "none.txt")], "prompt file not found"),
        (["--prompt", "a", "--prompt-file", "b"], "not allowed with argument"),
        (["--output", str(tmp_path / "no" / "dir.txt")], "cannot write"),
    ]
    for extra, message in cases:
        code, out, err = cli("sample", run_dir, *extra)
        assert code == 2 and err.count("\n") == 1 and message in err, (extra, err)
        if "--output" not in extra:
            assert out == "", extra  # nothing printed before the error


def test_sample_controls(cli, run_dir: Path, tmp_path: Path) -> None:
    def sample(*extra: str) -> tuple[str, str]:
        code, out, err = cli("sample", run_dir, "--max-new-tokens", "60", *extra)
        assert code == 0, err
        return out, err

    batch, _ = sample("--num-samples", "3", "--seed", "5")
    texts = batch.rstrip("\n").split("\n---------------\n")
    assert len(texts) == 3
    assert texts[1] == sample("--seed", "6")[0].rstrip("\n")  # sample i uses seed + i
    greedy, _ = sample("--temperature", "0")
    assert sample("--top-k", "1", "--seed", "9")[0] == greedy
    assert sample("--use-cache", "false", "--temperature", "0")[0] == greedy
    bf16, _ = sample("--dtype", "bfloat16", "--seed", "3")
    assert len(bf16) == 61
    full, _ = sample("--seed", "3")
    stopped, _ = sample("--seed", "3", "--stop", "e")
    assert "e" in full and stopped == full.split("e")[0] + "\n"
    (tmp_path / "prompt.txt").write_text("KING:\n", encoding="utf-8")
    from_file, _ = sample("--prompt-file", str(tmp_path / "prompt.txt"))
    assert from_file.startswith("KING:\n")
    long_prompt = "the quick brown fox jumps over the lazy dog " * 3
    out, err = sample("--prompt", long_prompt)
    assert "note: the prompt is longer than the context" in err and out.startswith(long_prompt)


def test_console_entry_point_exits_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tinygpt", "train", "--data", str(tmp_path / "none.txt")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("tinygpt: error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_shared_corpus_path_works_as_data(cli, tmp_path: Path, shakespeare_path) -> None:
    code, out, _ = cli(
        "train",
        "--data",
        shakespeare_path,
        *SHORT,
        "--train.sample_tokens",
        "0",
        "--out",
        tmp_path / "r",
    )
    assert code == 0 and "final: train loss" in out


def test_default_preset_suits_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tinygpt.cli import default_preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_preset() == "cpu-fast"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_preset() == "gpu-fast"


def test_end_of_run_points_to_an_earlier_best_checkpoint(run_dir: Path, capsys) -> None:
    from tinygpt.training.runs import print_best_if_earlier

    best = json.loads((run_dir / "checkpoints" / "best" / "meta.json").read_text())
    best_val = best["metrics"]["val_loss"]
    print_best_if_earlier(run_dir, best_val)  # the last evaluation was the best: nothing
    assert capsys.readouterr().out == ""
    print_best_if_earlier(run_dir, best_val + 0.5)  # the run got worse after its best
    out = capsys.readouterr().out
    assert f"lowest val loss {best_val:.4f} at step {best['step']}" in out
    assert f"tinygpt sample {run_dir / 'checkpoints' / 'best'}" in out


def test_a_mistyped_name_gets_the_nearest_ones(cli, shakespeare) -> None:
    """A preset, command, tokenizer, option or corpus one typo away is named, not listed."""
    mistakes = {
        ("train", "--preset", "cpu-fst"): "unknown value 'cpu-fst'; did you mean cpu-fast",
        ("trian",): "unknown command 'trian'; did you mean train",
        ("inspect", "--tokenizer", "chr"): "unknown value 'chr'; did you mean char?",
        ("train", "--data.tokenizer", "bpee"): "unknown tokenizer 'bpee'; did you mean bpe?",
        (
            "data",
            "tinyshakespear",
        ): "unknown corpus 'tinyshakespear'; did you mean tinyshakespeare?",
    }
    for argv, expected in mistakes.items():
        code, _, err = cli(*argv)
        assert code == 2 and expected in err and err.count("\n") == 1, (argv, err)
        assert "lecture-multihead" not in err  # not the whole list
    code, _, err = cli("train", "--preset", "zzz")  # nothing near: the whole list
    assert code == 2 and "(known: bigram, cpu-10min" in err


def test_resume_says_what_is_wrong_with_the_folder(
    cli, run_dir: Path, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(run_dir.parent)
    code, _, err = cli("train", "--resume", run_dir.parent / "shrot")
    assert code == 2 and "shrot does not exist; run directories here: " in err
    assert str(run_dir) in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = cli("train", "--resume", tmp_path / "empty")
    assert code == 2 and "empty holds no config.json: it is not a tinygpt run directory" in err


def test_files_written_are_named_on_lines_of_their_own(cli, run_dir: Path, tmp_path) -> None:
    png, text = tmp_path / "p.png", tmp_path / "s.txt"
    code, out, _ = cli("probs", run_dir, "--prompt", "RO", "--png", png)
    assert code == 0 and out.splitlines()[-1] == f"wrote {png}" and png.exists()
    code, out, err = cli("sample", run_dir, "--max-new-tokens", "5", "--output", text)
    assert code == 0 and err == f"wrote {text}\n" and "wrote" not in out  # stdout: the text


# torch cannot be imported in this process: what it prints is all these commands need
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
from tinygpt.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["data"], ["data", "tinyshakespeare"], ["data", "--help"]]
)
def test_help_and_data_answer_without_importing_torch(argv: list[str], shakespeare) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *argv], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    if argv == ["data", "tinyshakespeare"]:
        assert Path(done.stdout.strip()).read_text(encoding="utf-8").startswith("First Citizen:")
    else:
        assert "usage: tinygpt" in done.stdout or "tinyshakespeare" in done.stdout


# torch's compiler cannot be imported: a run that does not compile must not need it
WITHOUT_COMPILER = """
import atexit, sys
sys.modules["torch._dynamo"] = None
from tinygpt.cli import console
atexit.register(print, "exit functions ran")
try:
    console()
finally:
    print("the interpreter went on after the command")
"""


def test_a_run_that_does_not_compile_never_imports_the_compiler(shakespeare, tmp_path) -> None:
    """torch._dynamo takes 1.4 s to import on a 2-core CPU: the default recipe (Muon and
    AdamW, its evaluations, checkpoints and sample) trains and ends without it. The console
    script's process then ends at once: its output whole and its exit functions run, but no
    code after the command and no teardown of the interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_COMPILER, "train", "--out", tmp_path / "run",
         "--steps", "4", "--train.eval_interval", "2", "--train.sample_tokens", "20"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "val split, all" in done.stdout and (tmp_path / "run" / "loss.png").exists()
    last_lines = f"sample with: tinygpt sample {tmp_path / 'run'}\nexit functions ran\n"
    assert done.stdout.endswith(last_lines)
    assert "went on" not in done.stdout


def test_the_console_script_ends_with_the_commands_exit_status(tmp_path) -> None:
    """A user's error: one line and status 2, through the fast end of the process too."""
    done = subprocess.run(
        [sys.executable, "-m", "tinygpt", "sample", tmp_path / "no-such-run"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("tinygpt: error: ") and done.stderr.count("\n") == 1
