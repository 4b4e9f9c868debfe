"""Hugging Face interop: a run leaves as a `transformers` folder, and comes back; a
GPT-2-family folder comes in as a run (extra `hf`: `pip install 'tinygpt[hf]'`).

A GPT-2-shaped GPT leaves as transformers' own GPT2LMHeadModel: tinygpt's GPT keeps GPT-2's
module names, so the mapping is by name, with two differences: GPT-2 calls the blocks
`transformer.h` and stores its projections as Conv1D, whose weights are the transpose of a
Linear's; a run without biases exports zeros where GPT-2 has them (the same function). Any
other GPT (rotary, RMSNorm, ...) leaves with its own modelling code (hf_code/), under
tinygpt's own parameter names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tinygpt.checkpoint import (
    EXPORT_DESCRIPTION,
    Checkpoint,
    load_checkpoint,
    read_export_description,
    save_checkpoint,
    write_export_description,
)
from tinygpt.config import (
    Activation,
    DataConfig,
    ModelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
)
from tinygpt.errors import UserError, first_line
from tinygpt.files import check_new_folder, folder_written_whole, temp_dir, temp_file
from tinygpt.generate import window_keep
from tinygpt.models import build_model
from tinygpt.rundir import RunDir, check_run_dir, step_folder, writing
from tinygpt.tokenizers import END_OF_TEXT, Gpt2Tokenizer, Tokenizer
from tinygpt.tokenizers.bpe import byte_to_symbol
from tinygpt.tokenizers.gpt2 import RANKS_SHA256, cached_ranks_path, find_ranks, install_ranks

# GPT-2's MLP activation names <-> tinygpt's (gelu_new is the tanh approximation)
ACTIVATIONS_IN: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "relu2": "relu2",
}
ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "relu2": "relu2"}
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which tinygpt's GPT uses
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored (in, out)

# the switches of a GPT that GPT-2 has no equivalent for, and why
UNMAPPABLE = {
    "rotary": "GPT-2 learns a position table",
    "norm": "GPT-2 normalises with LayerNorm",
    "qk_norm": "GPT-2 does not normalise queries and keys",
    "embed_skip": "GPT-2's blocks read only the residual stream",
    "value_embeds": "GPT-2 has no per-block value embeddings",
    "smear": "GPT-2 embeds each token alone",
    "ngram": "GPT-2 has no n-gram table",
    "logit_softcap": "GPT-2 does not cap its logits",
}


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "Hugging Face interop needs transformers: pip install 'tinygpt[hf]'"
        ) from None
    transformers.logging.set_verbosity_error()  # its notes on generation defaults: not ours
    return transformers


# ---------------------------------------------------------------- export


def unmappable(model: ModelConfig) -> list[str]:
    """The switches of a GPT that GPT-2 has no place for, each with why ([]: GPT-2-shaped)."""
    defaults = ModelConfig()
    return [
        f"model.{name} = {getattr(model, name)!r} ({why})"
        for name, why in UNMAPPABLE.items()
        if getattr(model, name) != getattr(defaults, name)
    ]


def gpt2_config(model: ModelConfig, tokenizer: Tokenizer) -> Any:
    """transformers' GPT2Config for a GPT-2-shaped tinygpt GPT."""
    transformers = require_transformers()
    if missing := unmappable(model):
        raise UserError(f"cannot export to transformers' GPT-2: {'; '.join(missing)}")
    eot = tokenizer.eot_id
    return transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=model.block_size,
        n_embd=model.n_embd,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_inner=4 * model.n_embd,
        activation_function=ACTIVATIONS_OUT[model.activation],
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS,
        tie_word_embeddings=model.tie_weights,
        bos_token_id=eot,
        eos_token_id=eot,
    )


def to_gpt2_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A tinygpt GPT's weights under GPT-2's names and layouts; zeros for absent biases."""
    weights = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding | nn.Linear | nn.LayerNorm):
            continue
        target = "lm_head" if name == "lm_head" else "transformer." + gpt2_name(name)
        weight = module.weight.detach()
        weights[f"{target}.weight"] = weight.t() if name.endswith(CONV1D) else weight
        if name != "lm_head" and not isinstance(module, nn.Embedding):  # GPT-2 has a bias
            bias = module.bias if module.bias is not None else torch.zeros(weight.size(0))
            weights[f"{target}.bias"] = bias.detach()
    return {name: tensor.contiguous().float() for name, tensor in weights.items()}


def gpt2_name(name: str) -> str:
    """tinygpt's module name -> GPT-2's: `blocks.3.attn.c_attn` -> `h.3.attn.c_attn`."""
    return "h." + name.removeprefix("blocks.") if name.startswith("blocks.") else name


def export_run(run_dir: Path, out: Path) -> Path:
    """Write a run's newest checkpoint as a folder that `transformers` loads offline:
    config.json, model.safetensors, generation_config.json, the tokenizer, and a model card
    (README.md) that says what the model is and how to call it. A GPT-2-shaped GPT becomes
    transformers' own GPT2LMHeadModel; any other GPT carries its code (hf_code/), loaded
    with `trust_remote_code=True`."""
    transformers = require_transformers()
    check_new_folder(out, "export")
    checkpoint = load_checkpoint(run_dir)
    arch = checkpoint.config.model.arch
    if arch == "bigram":
        raise UserError(
            "a bigram table does not export to transformers (--to onnx takes any model)"
        )
    stock = arch == "gpt" and not unmappable(checkpoint.config.model)
    model = gpt2_model(checkpoint) if stock else custom_model(checkpoint)
    config = model.config
    model.generation_config = generation_config(transformers, config)
    model.generation_config.use_cache = arch == "gpt"  # the lecture's model has no cache
    tokenizer = hf_tokenizer(transformers, checkpoint.tokenizer, context_of(config))
    with folder_written_whole(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not stock:
            write_code(tmp, lecture=arch == "lecture")
        write_export_description(tmp, checkpoint)
        card = model_card(checkpoint, out, context_of(config), stock=stock)
        (tmp / MODEL_CARD).write_text(card, encoding="utf-8")
    return out


def gpt2_model(checkpoint: Checkpoint) -> Any:
    transformers = require_transformers()
    config = gpt2_config(checkpoint.config.model, checkpoint.tokenizer)
    model = transformers.GPT2LMHeadModel(config)
    model.load_state_dict(to_gpt2_weights(checkpoint.model), strict=True)
    return model


# the files of the code a folder carries, and the classes transformers finds in them
CUSTOM_CODE = ("configuration_tinygpt.py", "modeling_tinygpt.py")
LECTURE_CODE = "modeling_tinygpt_lecture.py"  # with models/lecture.py, as lecture.py
AUTO_CONFIG = "configuration_tinygpt.TinyGPTConfig"
AUTO_MODEL = {
    "gpt": "modeling_tinygpt.TinyGPTForCausalLM",
    "lecture": "modeling_tinygpt_lecture.TinyGPTLectureForCausalLM",
}
# what the lecture's code imports from tinygpt, and what stands in for it in a folder
LECTURE_IMPORTS = {
    "from tinygpt.config import ModelConfig\n": "",  # in annotations only, never evaluated
    "from tinygpt.models.base import LanguageModel\n": "LanguageModel = nn.Module\n",
}


def write_code(folder: Path, lecture: bool) -> None:
    """The modelling code a folder carries; for the lecture's model, tinygpt's own
    models/lecture.py too, its two tinygpt imports replaced by what they give it."""
    code = resources.files("tinygpt.hf_code")
    for name in (*CUSTOM_CODE, LECTURE_CODE) if lecture else CUSTOM_CODE:
        (folder / name).write_text(code.joinpath(name).read_text(encoding="utf-8"))
    if lecture:
        source = resources.files("tinygpt.models").joinpath("lecture.py").read_text("utf-8")
        for line, stand_in in LECTURE_IMPORTS.items():
            assert line in source, f"models/lecture.py no longer has {line!r}"
            source = source.replace(line, stand_in)
        (folder / "lecture.py").write_text(source, encoding="utf-8")


CUSTOM_FIELDS = (
    "block_size", "n_layer", "n_head", "n_embd", "bias", "rotary", "norm", "qk_norm",
    "activation", "tie_weights", "embed_skip", "value_embeds", "smear", "ngram",
    "logit_softcap",
)  # fmt: skip


def custom_model(checkpoint: Checkpoint) -> Any:
    """A GPT with switches GPT-2 lacks, or the lecture's model, as a model of hf_code/:
    the same parameter names (the lecture's under `lecture.`), so its weights load as they
    are (a tied head reads the embedding itself)."""
    require_transformers()
    from tinygpt.hf_code.configuration_tinygpt import TinyGPTConfig
    from tinygpt.hf_code.modeling_tinygpt import TinyGPTForCausalLM

    model_config = checkpoint.config.model
    eot = checkpoint.tokenizer.eot_id
    model_class = AUTO_MODEL[model_config.arch]
    config = TinyGPTConfig(
        vocab_size=checkpoint.tokenizer.vocab_size,
        window_keep=window_keep(model_config.block_size, SampleConfig.window),
        lecture_step=model_config.lecture_step if model_config.arch == "lecture" else "",
        auto_map={"AutoConfig": AUTO_CONFIG, "AutoModelForCausalLM": model_class},
        architectures=[model_class.rsplit(".", 1)[1]],
        bos_token_id=eot,
        eos_token_id=eot,
        **{name: getattr(model_config, name) for name in CUSTOM_FIELDS},
    )
    weights = {k: v.float() for k, v in checkpoint.model.state_dict().items()}
    if model_config.arch == "lecture":
        model = lecture_model(config)
        model.lecture.load_state_dict(weights, strict=True)
        return model.eval()
    model = TinyGPTForCausalLM(config)
    if model_config.tie_weights:
        del weights["lm_head.weight"]  # the embedding itself
    model.load_state_dict(weights, strict=True)
    return model.eval()


def lecture_model(config: Any) -> Any:
    """The lecture's model inside the carried wrapper, built here from tinygpt itself."""
    from tinygpt.hf_code.modeling_tinygpt_lecture import TinyGPTLectureForCausalLM
    from tinygpt.models.lecture import LectureLanguageModel

    return TinyGPTLectureForCausalLM(config, LectureLanguageModel(config, config.vocab_size))


def context_of(config: Any) -> int:
    """The tokens a model reads at once: GPT-2's n_positions, or tinygpt's block_size."""
    return getattr(config, "n_positions", None) or config.block_size


def generation_config(transformers: Any, config: Any) -> Any:
    """`tinygpt sample`'s defaults: temperature 1, no top-k. No max_length: a caller's
    `max_new_tokens` would meet it with a warning; the model card says what fits."""
    return transformers.GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.eos_token_id,
    )


MODEL_CARD = "README.md"


def model_card(checkpoint: Checkpoint, out: Path, context: int, *, stock: bool) -> str:
    """The exported folder's README.md: the YAML header a model hub reads, what the model
    is, how well it does, how much context it holds, and five lines that run it."""
    run = checkpoint.config
    metrics = checkpoint.metrics
    n_params = sum(p.numel() for p in checkpoint.model.parameters())
    loss = metrics.get("whole_val_loss", metrics.get("val_loss"))
    bpb = metrics.get("whole_val_bpb", metrics.get("val_bpb"))
    score = (
        f"{loss:.4f} nats per token, {bpb:.4f} bits per byte" if loss and bpb else "not measured"
    )
    dataset = Path(run.data.dataset).name
    new_tokens = max(1, min(100, context - 8)) if stock else 100
    remote = "" if stock else ", trust_remote_code=True"
    kind = (
        "It loads as transformers' `GPT2LMHeadModel`, with no tinygpt code."
        if stock
        else "It carries its own modelling code (`modeling_tinygpt.py`, torch and transformers "
        "only), which transformers runs with `trust_remote_code=True`; no tinygpt is needed."
    )
    if stock:
        beyond = (
            f"Keep the prompt's tokens plus `max_new_tokens` within {context}: past its context "
            "the model has no position to read (`tinygpt sample` slides its window instead)."
        )
    else:
        beyond = (
            f"Past its {context} tokens of context the window slides as `tinygpt sample`'s "
            "does: when it is full it keeps its last half and grows again."
        )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- tinygpt
- {"gpt2" if stock else "custom_code"}
- {run.data.tokenizer}-level
datasets:
- {dataset}
---

# {out.name}

A small GPT trained from scratch with tinygpt. {kind}

- model: {checkpoint.model.describe()}; {n_params:,} parameters
- tokenizer: `{run.data.tokenizer}`, {checkpoint.tokenizer.vocab_size:,} tokens
- trained on: {dataset}, {checkpoint.step:,} steps, from {run.recipe()}

| | |
|---|---|
| context | **{context} tokens**: a prompt and its new tokens together must fit in them |
| val loss | {score} |
| sampling defaults | temperature 1, no top-k (as `tinygpt sample`) |

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{out}"{remote})
tokenizer = AutoTokenizer.from_pretrained("{out}"{remote})
ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens={new_tokens})[0]))
```

{beyond}
"""


def hf_tokenizer(transformers: Any, tokenizer: Tokenizer, max_length: int) -> Any:
    special = {}
    if tokenizer.eot_id is not None:  # documents begin and end with it
        special = {"eos_token": END_OF_TEXT, "bos_token": END_OF_TEXT}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.to_huggingface(),
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
        **special,
    )


# ---------------------------------------------------------------- import


def model_config_from(hf_config: Any) -> ModelConfig:
    """tinygpt's ModelConfig for a GPT-2-family config, or one line on what does not map."""
    if hf_config.model_type != "gpt2":
        raise UserError(
            f"model type {hf_config.model_type!r} is not GPT-2's; tinygpt imports the GPT-2 "
            "family (model_type gpt2)"
        )
    activation = ACTIVATIONS_IN.get(hf_config.activation_function)
    inner = hf_config.n_inner or 4 * hf_config.n_embd
    problems = {
        f"activation {hf_config.activation_function!r}": activation is None,
        f"an MLP {inner} wide (tinygpt's is 4 x n_embd)": inner != 4 * hf_config.n_embd,
        f"layer_norm_epsilon {hf_config.layer_norm_epsilon}": (
            abs(hf_config.layer_norm_epsilon - LAYER_NORM_EPS) > 1e-12
        ),
        "unscaled attention": not hf_config.scale_attn_weights,
        "attention scaled by layer": hf_config.scale_attn_by_inverse_layer_idx,
        "cross-attention": hf_config.add_cross_attention,
    }
    found = [what for what, present in problems.items() if present]
    if found or activation is None:
        raise UserError(f"cannot import this GPT-2 variant: {', '.join(found)}")
    return ModelConfig(
        arch="gpt",
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        bias=True,
        tie_weights=bool(hf_config.tie_word_embeddings),
        activation=activation,
    )


def from_gpt2_weights(weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, Any]:
    """GPT-2's weights under tinygpt's names and layouts (what `model` loads)."""
    mine = {}
    for name in model.state_dict():
        module = name.rsplit(".", 1)[0]
        source = "lm_head.weight" if module == "lm_head" else "transformer." + gpt2_name(name)
        if source not in weights and module == "lm_head":  # tied, saved once
            source = "transformer.wte.weight"
        tensor = weights[source].float()
        is_conv1d = module.endswith(CONV1D) and name.endswith(".weight")
        mine[name] = tensor.t().contiguous() if is_conv1d else tensor
    return mine


def import_folder(folder: Path, out: Path) -> Path:
    """A GPT-2-family checkpoint folder (config.json and weights, GPT-2's tokenizer), or a
    folder tinygpt exported (either kind), as a tinygpt run directory at step 0, which
    sample, eval and `train --init-from` accept."""
    transformers = require_transformers()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (it has no config.json)")
    with writing(out):
        check_run_dir(out, overwrite=False)
        if (folder / EXPORT_DESCRIPTION).is_file():
            _import_export(out, folder, transformers)
        else:
            _import_into(out, folder, transformers)
    return out


def _import_export(out: Path, folder: Path, transformers: Any) -> None:
    """A folder tinygpt exported: its config and tokenizer from tinygpt.json, its weights
    from GPT-2's names (a stock folder) or as they are (a folder with its code)."""
    saved, tokenizer = read_export_description(folder)
    model = build_model(saved.model, tokenizer.vocab_size)
    if saved.model.arch == "gpt" and not unmappable(saved.model):  # GPT-2's own class
        load = transformers.GPT2LMHeadModel.from_pretrained
        hf_model = _loaded(folder, "weights", load, dtype=torch.float32)
        weights = from_gpt2_weights(hf_model.state_dict(), model)
    else:  # the folder carries its code: tinygpt's own names (the lecture's under lecture.)
        weights = _loaded(folder, "weights", lambda f, **_: load_file(f / "model.safetensors"))
        weights = {name.removeprefix("lecture."): w for name, w in weights.items()}
        if saved.model.arch == "gpt" and saved.model.tie_weights:
            weights["lm_head.weight"] = weights["wte.weight"]
    model.load_state_dict(weights)
    config = RunConfig(data=saved.data, model=saved.model, train=TrainConfig(steps=1))
    _write_run(out, config, tokenizer, model)


def _import_into(out: Path, folder: Path, transformers: Any) -> None:
    hf_config = _loaded(folder, "config", transformers.AutoConfig.from_pretrained)
    model_config = model_config_from(hf_config)
    tokenizer = gpt2_tokenizer_of(folder)
    if tokenizer.vocab_size != hf_config.vocab_size:
        raise UserError(
            f"{folder}: the model has {hf_config.vocab_size} tokens, GPT-2's tokenizer "
            f"{tokenizer.vocab_size}"
        )
    hf_model = _loaded(
        folder, "weights", transformers.GPT2LMHeadModel.from_pretrained, dtype=torch.float32
    )
    model = build_model(model_config, tokenizer.vocab_size)
    model.load_state_dict(from_gpt2_weights(hf_model.state_dict(), model))
    # batch 4: what `eval` and a fine-tune start from (GPT-2's 1,024 x 50,257 logits a row)
    train = TrainConfig(steps=1, batch_size=4)
    config = RunConfig(data=DataConfig(tokenizer="gpt2"), model=model_config, train=train)
    _write_run(out, config, tokenizer, model)


def _loaded(folder: Path, what: str, load: Any, **options: Any) -> Any:
    """transformers' `from_pretrained`, offline; what it cannot read is one line."""
    try:
        return load(folder, local_files_only=True, **options)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        # what transformers, torch and safetensors raise for a missing, foreign or broken
        # file (json's errors are ValueErrors); anything else is a bug and keeps its traceback
        raise UserError(f"cannot read the {what} in {folder}: {first_line(exc)}") from None


def _write_run(out: Path, config: RunConfig, tokenizer: Tokenizer, model: nn.Module) -> None:
    """A run directory holding one checkpoint, step 0, made whole before it moves into `out`
    (empty but for its writer's lock)."""
    tmp = temp_dir(out, ".import-")
    try:
        run = RunDir(tmp)
        run.write_config(config)
        run.write_tokenizer(tokenizer)
        save_checkpoint(
            step_folder(tmp, 0), model, step=0, config=config, tokenizer=tokenizer, metrics={}
        )
        RunDir(out).adopt(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gpt2_tokenizer_of(folder: Path) -> Tokenizer:
    """GPT-2's tokenizer, after checking that the folder's vocabulary is GPT-2's own (its
    ranks are then kept in the cache, as `--data.tokenizer_file` would). A folder without
    a tokenizer uses the ranks already in the cache."""
    vocab = _vocabulary(folder)
    if vocab is None:
        return Gpt2Tokenizer(find_ranks())
    symbol_to_byte = {s: b for b, s in byte_to_symbol().items()}
    lines = []
    for token, rank in sorted(vocab.items(), key=lambda item: item[1]):
        if token == END_OF_TEXT:
            continue
        try:
            token_bytes = bytes(symbol_to_byte[s] for s in token)
        except KeyError:
            raise _not_gpt2(folder) from None
        lines.append(base64.b64encode(token_bytes) + b" " + str(rank).encode())
    ranks = b"\n".join(lines) + b"\n"
    if hashlib.sha256(ranks).hexdigest() != RANKS_SHA256:
        raise _not_gpt2(folder)
    dest = cached_ranks_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(dest.parent, ".incoming-")
    try:
        tmp.write_bytes(ranks)
        return Gpt2Tokenizer(install_ranks(tmp))
    finally:
        tmp.unlink(missing_ok=True)


def _vocabulary(folder: Path) -> dict[str, int] | None:
    """The folder's token -> id table: tokenizer.json's, or vocab.json (None: neither)."""
    try:
        if (folder / "tokenizer.json").is_file():
            described = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            vocab = described["model"]["vocab"]
            added = {t["content"]: t["id"] for t in described.get("added_tokens", [])}
            return {**vocab, **added}
        if (folder / "vocab.json").is_file():
            return json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the tokenizer in {folder}: {exc}") from None
    return None


def _not_gpt2(folder: Path) -> UserError:
    return UserError(
        f"the tokenizer in {folder} is not GPT-2's vocabulary; tinygpt imports GPT-2's "
        "tokenizer only (remove it to use GPT-2's ranks from the cache)"
    )
