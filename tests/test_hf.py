"""Hugging Face interop: export to transformers, import from it, fine-tune, and `eval`.

Equality is checked against transformers itself: its logits on a batch to 1e-5 in float32,
its greedy `generate` token for token, its tokenizer id for id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import RunConfig, SampleConfig
from tinygpt.evaluate import whole_split_windows
from tinygpt.generate import generate
from tinygpt.rundir import read_meta
from tinygpt.tokenizers import Gpt2Tokenizer
from tinygpt.training.runs import train

transformers = pytest.importorskip("transformers")

TEXT_CHARS = 30_000  # of tiny shakespeare: a corpus that trains in a second


@pytest.fixture
def small_corpus(shakespeare_path: Path, tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:TEXT_CHARS], encoding="utf-8")
    return path


def tiny_run(corpus: Path, run_dir: Path, tokenizer: str = "char", **model: object) -> Path:
    config = RunConfig.from_dict(
        {
            "data": {"dataset": str(corpus), "tokenizer": tokenizer, "vocab_size": 300},
            "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, **model},
            "optim": {"lr": 3e-3, "warmup_steps": 0},
            "train": {"steps": 12, "batch_size": 8, "eval_interval": 12, "eval_batches": 2},
        }
    )
    train(config, run_dir)
    return run_dir


def batch_of(ids: list[int], rows: int = 3, length: int = 32) -> torch.Tensor:
    return torch.tensor([ids[i * 7 : i * 7 + length] for i in range(rows)])


def greedy(model: torch.nn.Module, prompt: torch.Tensor, block_size: int, n: int) -> list[int]:
    sampling = SampleConfig(max_new_tokens=n, temperature=0)
    return [int(t) for t in torch.cat(list(generate(model, prompt, block_size, sampling)))]


def up_to_end(tokens: list[int], eot: int | None) -> list[int]:
    """transformers stops at end-of-text; tinygpt's sampler goes on."""
    return tokens[: tokens.index(eot) + 1] if eot in tokens else tokens


def assert_same_model(
    ours: torch.nn.Module, theirs: torch.nn.Module, batch: torch.Tensor, eot: int | None
) -> None:
    """The same logits on a batch (float32, to 1e-5), the same greedy continuation."""
    with torch.no_grad():
        expected = theirs(batch).logits
        logits, _ = ours.eval()(batch)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    prompt, new = batch[:1, :8], batch.size(1) // 2
    generated = theirs.generate(prompt, max_new_tokens=new, do_sample=False)[0, 8:].tolist()
    assert generated == up_to_end(greedy(ours, prompt, batch.size(1), new), eot)


EXPORTABLE = [  # (tokenizer, model switches): tied and untied, with and without biases
    ("char", {"tie_weights": True, "bias": True}),
    ("char", {"tie_weights": False, "bias": False, "activation": "relu2"}),
    ("bpe", {"tie_weights": True, "bias": False, "activation": "gelu_tanh"}),
    ("bpe", {"tie_weights": False, "bias": True, "zero_init": True}),
    ("byte", {"activation": "relu", "dropout": 0.1}),
]


@pytest.mark.parametrize(("kind", "switches"), EXPORTABLE)
def test_export_matches_transformers(
    kind: str, switches: dict, small_corpus: Path, tmp_path: Path, cli
) -> None:
    run = tiny_run(small_corpus, tmp_path / "run", kind, **switches)
    code, _, err = cli("export", run, "--to", "hf", "--out", tmp_path / "hf")
    assert code == 0, err
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = load_checkpoint(run)
    assert type(model).__name__ == "GPT2LMHeadModel"

    text = small_corpus.read_text(encoding="utf-8")[-2000:]
    ids = ours.tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text

    assert_same_model(ours.model, model, batch_of(ids), ours.tokenizer.eot_id)


# every preset that trains a GPT, and each tokenizer kind: GPT-2-shaped ones (lecture,
# shakespeare-char) load as transformers' own GPT-2, the rest carry their code
PRESETS = [
    ("lecture", "char"),
    ("shakespeare-char", "char"),
    ("cpu-fast", "char"),
    ("cpu-fast", "byte"),
    ("cpu-5min", "char"),
    ("cpu-10min", "char"),
    ("cpu-bpe", "bpe"),
    ("gpu-fast", "char"),
    ("cpu-fast", "gpt2"),
    ("lecture-notebook", "char"),  # the lecture's own model: its code, tinygpt's lecture.py
]
FEW_STEPS = (
    "--steps", "3", "--train.batch_size", "2", "--train.eval_interval", "3",
    "--train.eval_batches", "1", "--train.whole_val", "false", "--train.sample_tokens", "0",
)  # fmt: skip

# run in a process that cannot import tinygpt: what a user of the folder has
LOADER = """
import json, sys
sys.modules["tinygpt"] = None
import torch, transformers
asked = json.loads(sys.stdin.read())
auto = transformers.AutoModelForCausalLM
model = auto.from_pretrained(asked["folder"], trust_remote_code=True).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(asked["folder"], trust_remote_code=True)
batch, prompt = torch.tensor(asked["batch"]), torch.tensor([asked["prompt"]])
model.save_pretrained(asked["again"])
tokenizer.save_pretrained(asked["again"])
reloaded = auto.from_pretrained(asked["again"], trust_remote_code=True).eval()
with torch.no_grad():
    saved = {"logits": model(batch).logits, "again": reloaded(batch).logits}
    name = getattr(sys.modules[type(model).__module__], "CACHE_NAME", None)
    if name:  # the carried GPT: 5 tokens into a cache, then 4 at once after them
        cache = transformers.DynamicCache()
        model(batch[:, :5], **{name: cache})
        after = model(batch[:, 5:9], context_ids=batch[:, :5], **{name: cache}).logits
        saved["cached"] = after
torch.save(saved, asked["out"])
read = []  # how many tokens each forward pass reads
def count(_, args, kwargs):
    read.append(kwargs["input_ids"].size(1))
model.register_forward_pre_hook(count, with_kwargs=True)
def greedy(**options):
    read.clear()
    new = model.generate(prompt, max_new_tokens=100, do_sample=False, **options)
    return new[0, prompt.size(1) :].tolist(), list(read)
(cached, cached_reads), (afresh, _) = greedy(), greedy(use_cache=False)
ids = tokenizer(asked["text"])["input_ids"]
print(json.dumps({"class": type(model).__name__, "greedy": cached, "afresh": afresh,
                  "reads": cached_reads, "ids": ids, "text": tokenizer.decode(ids)}))
"""


@pytest.mark.parametrize(("preset", "kind"), PRESETS, ids=lambda v: v)
def test_each_presets_run_exports_and_matches_transformers_without_tinygpt(
    preset: str,
    kind: str,
    shakespeare_path: Path,
    shakespeare,
    tmp_path: Path,
    cli,
    request: pytest.FixtureRequest,
) -> None:
    run = tmp_path / "run"
    ranks = ()
    if kind == "gpt2":  # GPT-2's own ranks, given as a file (skipped where there are none)
        ranks = ("--data.tokenizer_file", str(request.getfixturevalue("gpt2_ranks")))
    code, _, err = cli("train", "--preset", preset, "--data.tokenizer", kind, *ranks,
                       *FEW_STEPS, "--out", run)  # fmt: skip
    assert code == 0, err
    code, printed, err = cli("export", run, "--to", "hf", "--out", tmp_path / "hf")
    assert code == 0, err
    stock = preset in ("lecture", "shakespeare-char")
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert f"3 steps, from the `{preset}` preset" in card
    assert ("trust_remote_code=True" in printed) != stock
    assert (tmp_path / "hf" / "modeling_tinygpt.py").is_file() != stock
    ours = load_checkpoint(run)
    text = shakespeare_path.read_text(encoding="utf-8")[:3000]
    ids = ours.tokenizer.encode(text)
    batch = batch_of(ids, rows=2, length=min(48, ours.config.model.block_size))
    prompt = ids[:8]
    asked = {
        "folder": str(tmp_path / "hf"), "again": str(tmp_path / "again"), "text": text,
        "batch": batch.tolist(), "prompt": prompt, "out": str(tmp_path / "logits.pt"),
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", LOADER], input=json.dumps(asked), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    lecture = preset.startswith("lecture-")
    classes = {"stock": "GPT2LMHeadModel", "lecture": "TinyGPTLectureForCausalLM"}
    assert theirs["class"] == classes.get(
        "stock" if stock else "lecture" if lecture else "", "TinyGPTForCausalLM"
    )
    assert theirs["ids"] == ids and theirs["text"] == text
    with torch.no_grad():
        logits, _ = ours.model.eval()(batch)
    loaded = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(loaded["logits"], logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(loaded["again"], loaded["logits"])  # save_pretrained keeps it
    if not (stock or lecture):  # several new tokens after cached ones: the same logits
        torch.testing.assert_close(loaded["cached"], logits[:, 5:9], atol=1e-5, rtol=1e-5)
    block = ours.config.model.block_size
    expected = greedy(ours.model, torch.tensor([prompt]), block, 100)  # past 64: it slides
    assert theirs["greedy"] == theirs["afresh"] == up_to_end(expected, ours.tokenizer.eot_id)
    if lecture:  # no KV cache: each step reads its whole window
        assert min(theirs["reads"]) > 1
    elif not stock:  # one token a step from the cache; the whole window first and when it slides
        keep = json.loads((tmp_path / "hf" / "config.json").read_text())["window_keep"]
        assert theirs["reads"] == cached_reads(len(prompt), block, keep)[: len(theirs["reads"])]


def cached_reads(prompt: int, block: int, keep: int, steps: int = 100) -> list[int]:
    """The tokens each of `steps` forward passes reads with a KV cache, `tinygpt sample`'s
    shift window: all of the prompt, then one a step; when the window is full, its last
    `keep` tokens afresh."""
    reads, window = [prompt], prompt
    for _ in range(steps - 1):
        slides = window == block
        window = keep if slides else window + 1
        reads.append(keep if slides else 1)
    return reads


def test_export_refuses_a_bigram(small_corpus: Path, tmp_path: Path, cli) -> None:
    run = tiny_run(small_corpus, tmp_path / "run", arch="bigram")
    code, _, err = cli("export", run, "--to", "hf", "--out", tmp_path / "hf")
    assert code == 2 and "a bigram table does not export to transformers" in err


def gpt2_shaped_folder(folder: Path, ranks: Path, **config: object) -> torch.nn.Module:
    """A GPT-2-family model as transformers makes it: random weights, two small layers,
    GPT-2's vocabulary and tokenizer, saved with save_pretrained."""
    torch.manual_seed(0)
    settings = {"n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, **config}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings))
    with torch.no_grad():  # biases and norms away from their 0 and 1 starts
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder)
    hf_tokenizer = Gpt2Tokenizer(ranks).to_huggingface()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    return model.eval()


def test_import_gpt2_family_then_sample_and_fine_tune(
    gpt2_ranks: Path, small_corpus: Path, tmp_path: Path, cli
) -> None:
    hf_model = gpt2_shaped_folder(tmp_path / "gpt2-tiny", gpt2_ranks)
    code, out, err = cli("import", "hf", tmp_path / "gpt2-tiny", "--out", tmp_path / "run")
    assert code == 0, err
    ours = load_checkpoint(tmp_path / "run")
    assert ours.tokenizer.kind == "gpt2" and ours.config.model.activation == "gelu_tanh"

    ids = ours.tokenizer.encode(small_corpus.read_text(encoding="utf-8")[:3000])
    batch = batch_of(ids, length=64)
    assert_same_model(ours.model, hf_model, batch, 50256)

    code, out, err = cli("sample", tmp_path / "run", "--prompt", "ROMEO:", "--max-new-tokens", 8)
    assert code == 0 and out.startswith("ROMEO:"), err

    code, out, err = cli(
        "train",
        "--init-from",
        tmp_path / "run",
        "--data",
        small_corpus,
        "--steps",
        12,
        "--model.block_size",
        32,  # cropped from the folder's 64
        "--optim.lr",
        3e-3,
        "--optim.min_lr",
        3e-3,
        "--train.eval_interval",
        6,
        "--out",
        tmp_path / "fine",
    )
    assert code == 0, err
    assert "preset: finetune" in out
    losses = [
        json.loads(line)["val_loss"]
        for line in (tmp_path / "fine" / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in line
    ]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    tuned = load_checkpoint(tmp_path / "fine")
    assert tuned.config.model.block_size == 32 and tuned.tokenizer.kind == "gpt2"
    assert tuned.config.model.n_layer == 2 and tuned.config.train.init_from

    # and back out: the fine-tuned model exports, with GPT-2's own tokenizer
    code, _, err = cli("export", tmp_path / "fine", "--to", "hf", "--out", tmp_path / "back")
    assert code == 0, err
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    back_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back_tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2's known ids
    text = small_corpus.read_text(encoding="utf-8")[:3000]
    assert back_tokenizer(text)["input_ids"] == ours.tokenizer.encode(text)
    with torch.no_grad():
        torch.testing.assert_close(
            tuned.model.eval()(batch[:, :32])[0], again(batch[:, :32]).logits, atol=1e-5, rtol=1e-5
        )


def test_fine_tune_keeps_the_model_it_starts_from(small_corpus: Path, tmp_path: Path, cli) -> None:
    run = tiny_run(small_corpus, tmp_path / "run")
    for option, value, message in (
        ("--model.n_layer", 4, "the model comes from"),
        ("--model.block_size", 64, "longer than"),
        ("--data.tokenizer", "byte", "reads char tokens"),
    ):
        code, _, err = cli(
            "train", "--init-from", run, "--data", small_corpus, option, value, "--out", "x"
        )
        assert code == 2 and message in err, err
        assert not Path("x").exists()


def test_import_refuses_what_it_cannot_map(gpt2_ranks: Path, tmp_path: Path, cli) -> None:
    gpt2_shaped_folder(tmp_path / "wide", gpt2_ranks, n_inner=96)
    code, _, err = cli("import", "hf", tmp_path / "wide", "--out", tmp_path / "run")
    assert code == 2 and "an MLP 96 wide" in err and not (tmp_path / "run").exists()

    other = tmp_path / "other-vocabulary"
    gpt2_shaped_folder(other, gpt2_ranks)
    described = json.loads((other / "tokenizer.json").read_text())
    vocab = described["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]
    (other / "tokenizer.json").write_text(json.dumps(described))
    code, _, err = cli("import", "hf", other, "--out", tmp_path / "run")
    assert code == 2 and "not GPT-2's vocabulary" in err

    code, _, err = cli("import", "hf", tmp_path / "nothing", "--out", tmp_path / "run")
    assert code == 2 and "no config.json" in err

    broken = tmp_path / "broken"
    gpt2_shaped_folder(broken, gpt2_ranks)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    code, _, err = cli("import", "hf", broken, "--out", tmp_path / "run")
    assert code == 2 and "cannot read the weights" in err and len(err.splitlines()) == 1
    (broken / "config.json").write_text("{ not json")
    code, _, err = cli("import", "hf", broken, "--out", tmp_path / "run")
    assert code == 2 and "cannot read the config" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_eval_gives_the_training_runs_whole_split_figure(
    small_corpus: Path, tmp_path: Path, cli
) -> None:
    run = tiny_run(small_corpus, tmp_path / "run")
    reported = read_meta(load_checkpoint(run).path)["metrics"]
    code, out, err = cli("eval", run, "--json")
    assert code == 0, err
    score = json.loads(out)
    assert score["loss"] == pytest.approx(reported["whole_val_loss"], abs=1e-6)
    assert score["bits_per_byte"] == pytest.approx(reported["whole_val_bpb"], abs=1e-6)
    assert score["perplexity"] == pytest.approx(torch.tensor(score["loss"]).exp().item())
    assert score["tokens"] == 3000  # the last 10% of 30,000 characters

    code, out, _ = cli("eval", run, "--split", "all", "--json")
    assert json.loads(out)["tokens"] == TEXT_CHARS

    other = tmp_path / "other.txt"
    other.write_text(small_corpus.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    code, out, _ = cli("eval", run, "--data", other, "--split", "all")
    assert code == 0 and "5,000 tokens" in out and "perplexity" in out

    other.write_text("Zebra: 斑马", encoding="utf-8")
    code, _, err = cli("eval", run, "--data", other, "--split", "all")
    assert code == 2 and "not in the vocabulary" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("n", "block"), [(2, 4), (9, 4), (10, 3), (101, 8), (64, 64)])
def test_whole_split_windows_predict_every_token_once(n: int, block: int) -> None:
    targets = [
        t
        for start, length in whole_split_windows(n, block)
        for t in range(start + 1, start + length + 1)
    ]
    assert targets == list(range(1, n))
    assert all(length <= block for _, length in whole_split_windows(n, block))


def test_a_fine_tune_resumes_exactly_without_its_source(small_corpus: Path, tmp_path: Path) -> None:
    import shutil

    import safetensors.torch

    from tinygpt.config import resolve
    from tinygpt.rundir import list_checkpoints
    from tinygpt.training.runs import fine_tune_config, resume

    source = tiny_run(small_corpus, tmp_path / "source")
    given = {
        "data": {"dataset": str(small_corpus)},
        "model": {"block_size": 16},
        "train": {"init_from": str(source), "steps": 8, "eval_interval": 4, "sample_tokens": 0},
    }
    config = fine_tune_config(resolve("finetune", overrides=given), given)
    train(config, tmp_path / "whole")
    train(config, tmp_path / "halves", until=4)
    shutil.rmtree(source)  # resuming needs the run's own directory only
    resume(tmp_path / "halves")

    def last_weights(run: Path) -> dict[str, torch.Tensor]:
        return safetensors.torch.load_file(list_checkpoints(run)[-1] / "model.safetensors")

    whole, halves = last_weights(tmp_path / "whole"), last_weights(tmp_path / "halves")
    assert whole.keys() == halves.keys()
    assert all(torch.equal(whole[name], halves[name]) for name in whole)
    assert whole["wpe.weight"].shape == (16, 32)


def test_the_export_carries_a_model_card_whose_example_runs_quietly_without_tinygpt(
    small_corpus: Path, tmp_path: Path, cli
) -> None:
    run = tiny_run(small_corpus, tmp_path / "run")
    out = tmp_path / "hf"
    code, printed, _ = cli("export", run, "--to", "hf", "--out", out)
    assert code == 0 and "context: 32 tokens" in printed
    assert printed.splitlines()[-1] == str(out / "README.md")
    card = (out / "README.md").read_text(encoding="utf-8")
    header = card.split("---\n")[1]
    assert "library_name: transformers" in header and "- char-level" in header
    assert "**32 tokens**" in card and "nats per token" in card and "bits per byte" in card
    assert "12 steps, from its own config" in card  # no preset named
    example = card.split("```python\n")[1].split("```")[0]
    assert len(example.strip().splitlines()) == 5
    # in a process where tinygpt cannot be imported, with transformers' own warnings on
    blocked = "import sys; sys.modules['tinygpt'] = None; exec(sys.stdin.read())"
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", blocked], input=example, cwd=tmp_path,
        capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "warning"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ROMEO:") and len(done.stdout) > len("ROMEO:") + 5
    said = [line for line in done.stderr.splitlines() if "Loading weights" not in line]
    assert not [line for line in said if line.strip()], said  # no warning at all


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"rotary": True, "norm": "rmsnorm", "smear": 3, "ngram": 3, "tie_weights": False},
        {"arch": "lecture", "lecture_step": "layernorm"},
    ],
    ids=["gpt2-shaped", "with-its-code", "lecture"],
)
def test_what_tinygpt_exports_it_imports_back(
    switches: dict, small_corpus: Path, tmp_path: Path, cli
) -> None:
    """Out and back in: the imported run has the same config, tokenizer and logits."""
    run = tiny_run(small_corpus, tmp_path / "run", **switches)
    assert cli("export", run, "--to", "hf", "--out", tmp_path / "hf")[0] == 0
    code, _, err = cli("import", "hf", tmp_path / "hf", "--out", tmp_path / "back")
    assert code == 0, err
    ours, back = load_checkpoint(run), load_checkpoint(tmp_path / "back")
    assert back.config.model == ours.config.model and back.config.data == ours.config.data
    assert back.tokenizer.to_dict() == ours.tokenizer.to_dict()
    batch = batch_of(ours.tokenizer.encode(small_corpus.read_text(encoding="utf-8")[:500]))
    with torch.no_grad():
        torch.testing.assert_close(back.model.eval()(batch)[0], ours.model.eval()(batch)[0])
    code, out, err = cli("sample", tmp_path / "back", "--max-new-tokens", "20", "--seed", "3")
    assert code == 0 and out == cli("sample", run, "--max-new-tokens", "20", "--seed", "3")[1]
