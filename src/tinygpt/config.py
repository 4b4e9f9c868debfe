"""Run configuration: one typed dataclass per concern, presets, overrides and validation.

Precedence: dataclass defaults < preset (`--preset NAME` or `--config FILE.toml`) < overrides
such as `--model.block_size 16`. Every value is checked when the dataclasses are built, so a
config that exists is a valid one. Derived values (the vocabulary size) are not config.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tinygpt.errors import UserError, note, unknown_name
from tinygpt.tokenizers import tokenizer_kind

# the values a field may take: its type says them, the checks and the command line read it
Arch = Literal["bigram", "gpt", "lecture"]
LectureStep = Literal["head", "multihead", "ffwd", "residual", "layernorm"]
Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "gelu_tanh", "relu", "relu2"]  # gelu_tanh: GPT-2's own
Schedule = Literal["constant", "cosine", "wsd"]
Optimizer = Literal["adamw", "muon"]
ComputeDtype = Literal["auto", "float32", "bfloat16"]  # auto: bfloat16 where it pays
WeightDtype = Literal["float32", "bfloat16"]
WindowPolicy = Literal["exact", "shift"]
DEVICES = ("auto", "cpu", "cuda", "mps")  # or cuda:N, which a Literal cannot say
EVAL_SPLITS = ("val", "all")  # what `tinygpt eval` scores: the val split, or the whole text


def option(default: Any, help: str) -> Any:
    """A dataclass field whose help text shows up in `--help`."""
    return field(default=default, metadata={"help": help})


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def choices(kind: Any) -> tuple[str, ...] | None:
    """The values of a Literal field type (None for any other type)."""
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def type_name(kind: Any) -> str:
    return "str" if choices(kind) else kind.__name__


def _check_choices(section: Any, where: str) -> None:
    """Every Literal field of a section holds one of its values: the one "unknown X" check."""
    for name, kind in field_types(type(section)).items():
        allowed, value = choices(kind), getattr(section, name)
        if allowed and value not in allowed:
            raise UserError(f"unknown {where}{name} {value!r} (choices: {', '.join(allowed)})")


@dataclass
class DataConfig:
    dataset: str = option(
        "tinyshakespeare", "registered corpus name, a UTF-8 text file or a folder of .txt files"
    )
    tokenizer: str = option(
        "char", "tokenizer kind: char, byte, bpe (trained here) or gpt2 (GPT-2's vocabulary)"
    )
    vocab_size: int = option(0, "bpe: vocabulary size (0: chosen from the corpus size)")
    tokenizer_file: str = option("", "gpt2: GPT-2's ranks file gpt2.tiktoken (kept once given)")
    val_fraction: float = option(0.1, "fraction of the corpus, taken from its end, used as val")

    def __post_init__(self) -> None:
        _require(bool(self.dataset), "data.dataset must not be empty")
        tokenizer_kind(self.tokenizer)  # the registered kinds (tokenizers/)
        _require(self.vocab_size >= 0, "data.vocab_size must not be negative")
        _require(0 < self.val_fraction < 1, "data.val_fraction must be between 0 and 1")


@dataclass
class ModelConfig:
    arch: Arch = option("gpt", "model architecture")
    block_size: int = option(64, "context length in tokens")
    n_layer: int = option(4, "Transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "embedding width; a multiple of n_head")
    dropout: float = option(0.0, "dropout probability (0: none)")
    bias: bool = option(True, "biases in linear layers and LayerNorm")
    tie_weights: bool = option(True, "share the token embedding with the output head")
    rotary: bool = option(False, "rotary position encoding instead of learned positions")
    norm: Norm = option("layernorm", "normalisation")
    qk_norm: bool = option(False, "RMS-normalise queries and keys before attention")
    activation: Activation = option("gelu", "MLP activation")
    zero_init: bool = option(False, "start output projections (and an untied head) at zero")
    embed_skip: bool = option(False, "feed the token embedding to every block (learned mix)")
    value_embeds: bool = option(False, "add a per-block token embedding to attention values")
    smear: int = option(0, "add the embeddings of the N tokens before each (learned gates)")
    ngram: int = option(
        0, "add an n-gram table's logits: 2 by the last token, 3 by the last two (0: none)"
    )
    ngram_counts: float = option(
        0.0, "start model.ngram's table at this multiple of the train split's log-frequencies"
    )
    logit_softcap: float = option(0.0, "squash logits into (-c, c) with c*tanh(x/c) (0: off)")
    lecture_step: LectureStep = option(
        "layernorm", "arch lecture: how far along the lecture's code (models/lecture.py)"
    )

    def __post_init__(self) -> None:
        _check_choices(self, "model.")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            _require(getattr(self, name) >= 1, f"model.{name} must be at least 1")
        _require(
            self.n_embd % self.n_head == 0,
            f"model.n_embd ({self.n_embd}) must be a multiple of model.n_head ({self.n_head})",
        )
        _require(
            not self.rotary or (self.n_embd // self.n_head) % 2 == 0,
            "model.rotary needs an even head size (n_embd // n_head)",
        )
        _require(0 <= self.dropout < 1, "model.dropout must be in [0, 1)")
        _require(self.logit_softcap >= 0, "model.logit_softcap must not be negative")
        _require(self.smear >= 0, "model.smear must not be negative")
        _require(self.ngram in (0, 2, 3), "model.ngram must be 0 (none), 2 or 3")
        _require(self.ngram_counts >= 0, "model.ngram_counts must not be negative")


MAX_NGRAM_PARAMETERS = 1 << 23  # a bigger n-gram table is too big to learn in a small run


def ngram_parameters(n: int, vocab_size: int) -> int:
    """The size of the `model.ngram` table: a row of logits per last token (n=2) or per pair
    of the last two, the first of which may be 'none' (n=3)."""
    rows = {0: 0, 2: vocab_size, 3: (vocab_size + 1) * vocab_size}[n]
    return rows * vocab_size


def fit_to_vocabulary(config: ModelConfig, vocab_size: int) -> ModelConfig:
    """The config, with an n-gram table too big for this vocabulary turned off and a note
    saying so: the CPU default has one, made for characters, and still runs with a BPE."""
    size = ngram_parameters(config.ngram, vocab_size)
    if size <= MAX_NGRAM_PARAMETERS:
        return config
    note(
        f"model.ngram {config.ngram} is off: its table would hold {size:,} parameters with "
        f"{vocab_size:,} tokens; it is for character vocabularies"
    )
    return dataclasses.replace(config, ngram=0, ngram_counts=0.0)


@dataclass
class OptimConfig:
    optimizer: Optimizer = option("adamw", "optimizer")
    lr: float = option(1e-3, "peak AdamW learning rate")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices (not on biases or norms)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    schedule: Schedule = option("cosine", "learning-rate schedule")
    warmup_steps: int = option(100, "linear warmup from 0 to lr over these steps")
    min_lr: float = option(1e-4, "learning rate at the end of the decay")
    decay_fraction: float = option(0.2, "wsd: fraction of the steps spent decaying at the end")
    muon_lr: float = option(0.02, "muon: peak learning rate of the hidden matrices")
    muon_momentum: float = option(0.95, "muon: momentum")
    muon_ns_steps: int = option(5, "muon: Newton-Schulz iterations per step (its cost)")
    muon_ns_dtype: ComputeDtype = option(
        "auto",
        "muon: dtype of the Newton-Schulz products (auto: bfloat16 where it is fast, else "
        "float32; a CPU multiplies small matrices faster in float32)",
    )
    ema: float = option(
        0.0,
        "decay of a moving average of the weights that evaluations score and checkpoints "
        "save (0: none; 0.999: about the last thousand steps)",
    )

    def __post_init__(self) -> None:
        _check_choices(self, "optim.")
        _require(self.lr > 0, "optim.lr must be positive")
        _require(self.muon_lr > 0, "optim.muon_lr must be positive")
        _require(0 <= self.muon_momentum < 1, "optim.muon_momentum must be in [0, 1)")
        _require(self.muon_ns_steps >= 1, "optim.muon_ns_steps must be at least 1")
        _require(self.weight_decay >= 0, "optim.weight_decay must not be negative")
        for name in ("beta1", "beta2"):
            _require(0 <= getattr(self, name) < 1, f"optim.{name} must be in [0, 1)")
        _require(self.grad_clip >= 0, "optim.grad_clip must not be negative")
        _require(self.warmup_steps >= 0, "optim.warmup_steps must not be negative")
        _require(0 <= self.min_lr <= self.lr, "optim.min_lr must be in [0, lr]")
        _require(0 < self.decay_fraction <= 1, "optim.decay_fraction must be in (0, 1]")
        _require(0 <= self.ema < 1, "optim.ema must be in [0, 1)")


@dataclass
class TrainConfig:
    steps: int = option(2000, "optimizer steps to train for")
    time_limit: float = option(
        0.0,
        "seconds of training steps to fit the run into: as many steps as the measured speed "
        "allows, up to train.steps (0: no limit, train.steps it is)",
    )
    batch_size: int = option(12, "sequences per micro-step")
    grad_accum_steps: int = option(1, "micro-steps per optimizer step (global batch multiplier)")
    eval_interval: int = option(250, "evaluate (and checkpoint) every this many steps")
    eval_batches: int = option(20, "fixed batches per split in each evaluation")
    eval_rows: int = option(
        0,
        "windows per evaluation forward pass (0: as many as pay, about 4k tokens; at least "
        "batch_size in the periodic evaluations); the figures do not depend on it",
    )
    log_interval: int = option(100, "write a training line to metrics.jsonl every this many steps")
    seed: int = option(1337, "seed for weights, batches and sampling")
    device: str = option("auto", f"device ({', '.join(DEVICES)}, or cuda:N)")
    dtype: ComputeDtype = option(
        "auto", "autocast dtype (auto: bfloat16 on CUDA if supported, else float32)"
    )
    compile: bool = option(False, "torch.compile the model")
    threads: int = option(
        0,
        "CPU threads for the arithmetic (0: the CPUs this process may use that other work "
        "leaves free at the start; saved, so that a resumed run repeats it)",
    )
    keep_checkpoints: int = option(2, "newest step checkpoints to keep (the best is kept apart)")
    sample_tokens: int = option(500, "tokens of text to print after training (0: none)")
    tensorboard: str = option("", "also log the metrics for TensorBoard in this folder ('': off)")
    reference_val_loss: float = option(
        0.0, "a val loss to compare with, drawn by `tinygpt plot` (the lecture's; 0: none)"
    )
    whole_val: bool = option(
        True, "after the last step, score every val token once (the figure `tinygpt eval` gives)"
    )
    whole_val_tokens: int = option(
        250_000,
        "whole_val scores at most this many tokens: a larger val split is scored on evenly "
        "spaced windows, with the standard error (`tinygpt eval` reads every token)",
    )
    init_from: str = option(
        "", "start from this run's weights, model and tokenizer (fine-tuning; '': from scratch)"
    )
    preset: str = option(
        "",
        "the preset this run's config started from (set by --preset; a record, as in "
        "exported model cards)",
    )

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum_steps", "eval_interval", "eval_batches")
        for name in (*positive, "log_interval", "keep_checkpoints", "whole_val_tokens"):
            _require(getattr(self, name) >= 1, f"train.{name} must be at least 1")
        _require(self.seed >= 0, "train.seed must not be negative")
        _require(self.sample_tokens >= 0, "train.sample_tokens must not be negative")
        _require(self.threads >= 0, "train.threads must not be negative (0: chosen at start)")
        _require(self.eval_rows >= 0, "train.eval_rows must not be negative (0: chosen)")
        limit = self.time_limit
        _require(math.isfinite(limit) and limit >= 0, "train.time_limit must be 0 or positive")
        _check_choices(self, "train.")
        known = self.device in DEVICES or self.device.startswith("cuda:")
        _require(known, f"unknown train.device {self.device!r} ({', '.join(DEVICES)}, cuda:N)")


@dataclass
class SampleConfig:
    """How to draw text from a trained model (not part of a run's config)."""

    max_new_tokens: int = option(500, "tokens to generate")
    temperature: float = option(1.0, "divide the logits by this; 0 means greedy (argmax)")
    top_k: int = option(0, "sample among the k most likely tokens only (0: all)")
    top_p: float = option(1.0, "sample among the smallest set of tokens with this mass (1: all)")
    num_samples: int = option(1, "samples drawn at once; sample i uses seed + i")
    seed: int = option(1337, "sampling seed")
    use_cache: bool = option(True, "decode from a KV cache (GPT) instead of recomputing")
    window: WindowPolicy = option(
        "shift",
        "past the context: shift (keep the window's last half, re-read it once, go on from "
        "the cache) or exact (slide the window each token, recomputing it)",
    )
    dtype: WeightDtype = option("float32", "weights for sampling (bfloat16: half the bytes)")

    def __post_init__(self) -> None:
        _require(self.max_new_tokens >= 1, "max new tokens must be at least 1")
        _check_choices(self, "sampling ")
        check_temperature(self.temperature)
        _require(self.top_k >= 0, f"top-k must be at least 1 (or 0: off), got {self.top_k}")
        _require(0 < self.top_p <= 1, f"top-p must be in (0, 1], got {self.top_p}")
        _require(self.num_samples >= 1, "the number of samples must be at least 1")
        _require(self.seed >= 0, "the seed must not be negative")


def check_temperature(temperature: float) -> None:
    """A temperature divides the logits: 0 means greedy, a negative one means nothing."""
    _require(
        math.isfinite(temperature) and temperature >= 0,
        f"temperature must be 0 (greedy) or positive, got {temperature}",
    )


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def recipe(self) -> str:
        """How this run came about, in words for a model card."""
        start = f"the `{self.train.preset}` preset" if self.train.preset else "its own config"
        if self.train.init_from:
            return f"{start}, fine-tuned from the weights of `{self.train.init_from}`"
        return start

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build and validate a config; unknown sections or keys are an error."""
        sections = section_types()
        for name in values:
            _require(name in sections, unknown_name("config section", name, sections))
        parts = {}
        for name, section_cls in sections.items():
            given = values.get(name, {})
            _require(isinstance(given, dict), f"config section {name!r} must be a table")
            parts[name] = _build_section(name, section_cls, given)
        return cls(**parts)


def section_types() -> dict[str, type]:
    """The config sections by name, in order: {'data': DataConfig, ...}."""
    return {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}  # type: ignore[misc]  # each section has a default factory


def field_types(section_cls: type) -> dict[str, type]:
    """The type of each field of a section dataclass, e.g. {'steps': int, ...}."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _build_section(name: str, section_cls: type, given: dict[str, Any]) -> Any:
    types = field_types(section_cls)
    values = {}
    for key, value in given.items():
        _require(
            key in types, unknown_name("option", f"{name}.{key}", (f"{name}.{k}" for k in types))
        )
        values[key] = _check_type(f"{name}.{key}", types[key], value)
    return section_cls(**values)


def _check_type(key: str, kind: Any, value: Any) -> Any:
    """Accept a value of the field's type (an int where a float is wanted, too)."""
    if choices(kind):
        kind = str  # which strings is the section's own check
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    _require(ok, f"{key} must be of type {kind.__name__}, got {value!r}")
    if kind is float:
        _require(math.isfinite(value), f"{key} must be a finite number, got {value!r}")
    return value


def parse_value(kind: Any, text: str) -> Any:
    """Turn a command-line string into a value of a field's type."""
    if choices(kind):
        return text
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return kind(text)


def parse_overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    """`section.field=VALUE` strings as nested overrides, typed as on the command line:
    ["optim.lr=2e-3", "train.steps=100"] -> {"optim": {"lr": 0.002}, "train": {"steps": 100}}."""
    overrides: dict[str, dict[str, Any]] = {}
    sections = section_types()
    for setting in settings:
        key, sep, text = setting.partition("=")
        section, _, name = key.partition(".")
        _require(bool(sep) and section in sections, f"{setting!r} is not section.field=VALUE")
        kinds = field_types(sections[section])
        _require(name in kinds, unknown_name("option", key, (f"{section}.{k}" for k in kinds)))
        try:
            overrides.setdefault(section, {})[name] = parse_value(kinds[name], text)
        except ValueError:
            raise UserError(f"{key}: {text!r} is not a {type_name(kinds[name])}") from None
    return overrides


def preset_names() -> list[str]:
    """The presets that ship with tinygpt."""
    folder = resources.files("tinygpt") / "configs"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_preset(name: str) -> dict[str, Any]:
    """The values of a shipped preset, as a nested dict."""
    names = preset_names()
    _require(name in names, unknown_name("preset", name, names))
    text = (resources.files("tinygpt") / "configs" / f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_config_file(path: Path) -> dict[str, Any]:
    """The values of a user's TOML config file, as a nested dict."""
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update: overrides win, sections are merged key by key."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def resolve(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < preset or config file < overrides, validated."""
    values: dict[str, Any] = {}
    if preset is not None:
        values = merge(values, load_preset(preset))
        values = merge(values, {"train": {"preset": preset}})
    if config_file is not None:
        values = merge(values, load_config_file(config_file))
    return RunConfig.from_dict(merge(values, overrides or {}))
