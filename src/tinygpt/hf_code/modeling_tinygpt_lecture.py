"""The lecture's model as a transformers model (shipped in exported folders): tinygpt's own
models/lecture.py, copied beside this file as lecture.py, inside a PreTrainedModel.

Like tinygpt's sampler it reads each window afresh, and slides it past the context as
`tinygpt sample` does (modeling_tinygpt.sampler_window).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_tinygpt import TinyGPTConfig
from .modeling_tinygpt import sampler_window


class TinyGPTLectureForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyGPTConfig
    config: TinyGPTConfig
    base_model_prefix = ""
    main_input_name = "input_ids"

    def __init__(self, config: TinyGPTConfig, lecture: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        if lecture is None:  # in a folder: lecture.py is tinygpt's models/lecture.py, copied
            from .lecture import LectureLanguageModel

            lecture = LectureLanguageModel(config, config.vocab_size)
        self.lecture: Any = lecture
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The weights come from the folder."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.lecture.token_embedding_table

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> CausalLMOutput:
        idx = input_ids[:, -self.config.block_size :]
        logits, _ = self.lecture(idx)  # (B, T, V)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            targets = labels[:, -idx.size(1) :][:, 1:]
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten())
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict:
        return {"input_ids": sampler_window(input_ids, self.config)}
