"""Generation for the server: a fixed number of slots, a short queue, and worker threads.

A request takes a slot (or waits in the queue; past it, 429) and its tokens are generated on
a worker thread, so the event loop stays free for other requests and /health. The worker
checks between tokens whether the request was cancelled (the client left) or ran past its
deadline, so either ends it within one token step; the slot is freed when the worker stops.
The text is what `tinygpt sample` gives for the same prompt, settings and seed: the same
prompt encoding (`encode_prompt`), generator and per-sample seeds (seed + i), and the same
path from tokens to text with its stop strings (`decode_rows`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from tinygpt.checkpoint import Checkpoint
from tinygpt.config import SampleConfig
from tinygpt.errors import UserError
from tinygpt.generate import StopScanner, decode_rows, encode_prompt, generate
from tinygpt.serve.protocol import ApiError, CompletionRequest
from tinygpt.serve.settings import ServeSettings

log = logging.getLogger("tinygpt.serve")


@dataclass
class ChoiceState:
    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None


# (choice index, text, finish_reason or None), sent from the worker thread as text comes
Event = tuple[int, str, str | None]


@dataclass
class Plan:
    """One request, checked and encoded, and what its generation has produced so far."""

    prompts: list[list[int]]
    prompt_tokens: int
    sampling: SampleConfig
    stops: list[str]
    deadline: float
    choices: list[ChoiceState]
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)


@dataclass
class Metrics:
    requests_served: int = 0
    tokens_generated: int = 0
    active: int = 0
    queued: int = 0
    rejected: int = 0  # 429s

    def view(self) -> dict[str, int]:
        return dict(vars(self))


class Engine:
    """The loaded model and its slots."""

    def __init__(self, checkpoint: Checkpoint, settings: ServeSettings, name: str) -> None:
        self.model = checkpoint.model.eval()
        self.tokenizer = checkpoint.tokenizer
        self.block_size = checkpoint.config.model.block_size
        self.settings = settings
        self.name = name
        self.metrics = Metrics()
        self.slots = asyncio.Semaphore(settings.slots)
        self.executor = ThreadPoolExecutor(settings.slots, thread_name_prefix="generate")

    def plan(self, request: CompletionRequest) -> Plan:
        """Encode and check a request against the caps (400s), before it takes a slot."""
        if request.max_tokens > self.settings.max_tokens:
            raise ApiError(
                400,
                f"max_tokens {request.max_tokens} is over this server's cap of "
                f"{self.settings.max_tokens}",
                param="max_tokens",
            )
        prompts, prompt_tokens = [], 0
        for text in request.prompts:
            try:
                prompt = encode_prompt(self.tokenizer, text, self.block_size)
            except UserError as exc:
                raise ApiError(400, f"prompt: {exc}", param="prompt") from None
            if prompt.length > self.settings.max_prompt_tokens:
                raise ApiError(
                    400,
                    f"the prompt has {prompt.length} tokens, over this server's cap of "
                    f"{self.settings.max_prompt_tokens}",
                    param="prompt",
                )
            prompts.append(prompt.ids)
            prompt_tokens += prompt.length  # an empty prompt is the start token
        seed = request.seed if request.seed is not None else secrets.randbits(31)
        sampling = SampleConfig(
            max_new_tokens=request.max_tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            num_samples=request.n,
            seed=seed,
        )
        try:
            StopScanner(request.stops)  # checks them
        except UserError as exc:
            raise ApiError(400, f"stop: {exc}", param="stop") from None
        count = len(prompts) * request.n
        return Plan(
            prompts=prompts,
            prompt_tokens=prompt_tokens,
            sampling=sampling,
            stops=request.stops,
            deadline=time.monotonic() + self.settings.deadline_s,
            choices=[ChoiceState(i) for i in range(count)],
        )

    async def start(self, plan: Plan, on_event: Callable[[Event], None]) -> asyncio.Future:
        """Take a slot (waiting in the queue, or 429 when it is full) and start generating
        on a worker thread; the future is done when the worker has stopped and freed it."""
        if self.slots.locked() and self.metrics.queued >= self.settings.queue:
            self.metrics.rejected += 1
            raise ApiError(
                429,
                "the server is busy: every generation slot and queue place is taken",
                kind="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        self.metrics.queued += 1
        try:
            await self.slots.acquire()
        finally:
            self.metrics.queued -= 1
        self.metrics.active += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self._work, plan, on_event)
        future.add_done_callback(lambda done: self._finish(plan, done))
        return future

    def _finish(self, plan: Plan, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("generation failed", exc_info=future.exception())
        self.metrics.active -= 1
        self.metrics.requests_served += 1
        self.metrics.tokens_generated += plan.completion_tokens
        self.slots.release()

    def _work(self, plan: Plan, on_event: Callable[[Event], None]) -> None:
        n = plan.sampling.num_samples
        for p, ids in enumerate(plan.prompts):
            if plan.cancel.is_set():
                return
            self._generate(plan, ids, plan.choices[p * n : (p + 1) * n], on_event)

    @torch.inference_mode()
    def _generate(
        self,
        plan: Plan,
        ids: list[int],
        rows: list[ChoiceState],
        on_event: Callable[[Event], None],
    ) -> None:
        device = next(self.model.parameters()).device
        idx = torch.tensor([ids] * len(rows), dtype=torch.long, device=device)
        tokens = _until_deadline(generate(self.model, idx, self.block_size, plan.sampling), plan)
        for piece in decode_rows(tokens, self.tokenizer, plan.stops):
            if plan.cancel.is_set():
                return
            row = rows[piece.row]
            row.tokens = piece.tokens
            self._emit(row, piece.text, on_event)
            if piece.finish is not None:
                row.finish_reason = piece.finish
                on_event((row.index, "", piece.finish))

    @staticmethod
    def _emit(row: ChoiceState, text: str, on_event: Callable[[Event], None]) -> None:
        if text:
            row.text += text
            on_event((row.index, text, None))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _until_deadline(tokens: Iterator[torch.Tensor], plan: Plan) -> Iterator[torch.Tensor]:
    """The tokens, ending after the one during which the request's deadline passed (or at
    once when the client has left): its rows then end as if their tokens ran out."""
    for token in tokens:
        if plan.cancel.is_set():
            return
        yield token
        if time.monotonic() > plan.deadline:
            return
