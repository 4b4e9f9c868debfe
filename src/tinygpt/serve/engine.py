"""Generation for the server: every active request decoded in one batched step.

Requests wait in a queue (past `queue`, 429) and join the batch between steps while their
rows (one per choice) fit in `max_batch`. A newcomer's prompt is prefilled on its own; then
its rows decode with everyone else's, one forward pass a step, each row at its own position
in one ragged KV cache (models/gpt.py's KVCache). A row leaves when its text is done (its
tokens ran out or a stop string came), its request's deadline passed (after the token
during which it did) or its client left: all checked between steps, so /health and new
requests are answered meanwhile. A model without a KV cache decodes each request on its own.

The text is what `tinygpt sample` gives for the same prompt, settings and seed: the same
prompt encoding (`encode_prompt`), per-sample generators (seed + i), window policy and path
from tokens to text (`RowText`). Only the rounding of a batched product can differ from
decoding alone (~1e-6 in the logits), which changes a sampled token about never.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from tinygpt.checkpoint import Checkpoint
from tinygpt.config import SampleConfig
from tinygpt.errors import UserError
from tinygpt.generate import (
    Decoder,
    Piece,
    RowText,
    StopScanner,
    encode_prompt,
    sample_next_token,
    seeded_generators,
    window_keep,
)
from tinygpt.models import LanguageModel
from tinygpt.models.layers import with_fast_matvec
from tinygpt.serve.protocol import ApiError, CompletionRequest
from tinygpt.serve.settings import ServeSettings

log = logging.getLogger("tinygpt.serve")


@dataclass
class ChoiceState:
    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None


# (choice index, text, finish_reason or None): what a step adds to a choice. The decoding
# thread hands a request its events once a step, as a list.
Event = tuple[int, str, str | None]
Listener = Callable[[list[Event]], None]


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


class Metrics:
    """What /metrics shows: counts, rows decoding and requests waiting, and recent speed."""

    WINDOW_S = 10.0  # tokens/s over this many seconds; first-token times of the last 100

    def __init__(self) -> None:
        self.requests_served = self.tokens_generated = self.rejected = 0
        self.active_rows = self.queued = 0
        self.steps: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps
        self.first_tokens_ms: deque[float] = deque(maxlen=100)

    def step(self, tokens: int) -> None:
        now = time.monotonic()
        self.steps.append((now, tokens))
        self.tokens_generated += tokens
        while self.steps and self.steps[0][0] < now - self.WINDOW_S:
            self.steps.popleft()

    def view(self) -> dict[str, float]:
        recent = list(self.steps)
        span = recent[-1][0] - recent[0][0] if len(recent) > 1 else 0.0
        rate = sum(n for _, n in recent[1:]) / span if span > 0 else 0.0
        first = statistics.median(self.first_tokens_ms) if self.first_tokens_ms else 0.0
        return {
            "requests_served": self.requests_served,
            "tokens_generated": self.tokens_generated,
            "rejected": self.rejected,  # 429s
            "active_rows": self.active_rows,
            "queued": self.queued,
            "tokens_per_second": round(rate, 1),
            "first_token_ms_p50": round(first, 1),
        }


@dataclass
class Row:
    """One choice of a request on its way through the batch."""

    choice: ChoiceState
    text: RowText
    generator: torch.Generator
    window: list[int]  # the tokens the model sees, kept for a shift of the window
    logits: torch.Tensor  # (V,): of its next token
    done: bool = False


@dataclass
class Group:
    """The rows of one prompt of a request (its n choices), and, for a model without a KV
    cache, the decoder that recomputes them together."""

    rows: list[Row]
    decoder: Decoder | None = None

    def drawing(self) -> list[Row]:
        """The rows that draw a token this step: with a decoder every row until all are done
        (it steps them together, as `tinygpt sample` does), else the rows still going."""
        if self.decoder is not None:
            return self.rows if any(not r.done for r in self.rows) else []
        return [r for r in self.rows if not r.done]


@dataclass
class Job:
    """A request in the batch: its rows, and where its text goes."""

    plan: Plan
    on_events: Listener
    future: Future
    arrived: float
    groups: list[Group] = field(default_factory=list)
    first_token_ms: float | None = None
    events: list[Event] = field(default_factory=list)  # not yet handed on
    steps_held: int = 0  # steps whose events are in `events`
    handed_on: bool = False  # has the request had text yet

    @property
    def rows(self) -> list[Row]:
        return [row for group in self.groups for row in group.rows]

    @property
    def width(self) -> int:
        """Rows in the batch: one per choice."""
        return len(self.plan.choices)

    def emit(self, row: Row, piece: Piece) -> None:
        row.choice.tokens = piece.tokens
        if piece.text:
            row.choice.text += piece.text
            self.events.append((row.choice.index, piece.text, None))
        if piece.finish is not None:
            row.done, row.choice.finish_reason = True, piece.finish
            self.events.append((row.choice.index, "", piece.finish))

    def hand_on(self, interval: int) -> None:
        """The events so far to the request: its first text at once, then every `interval`
        steps, and a choice's finish at once."""
        self.steps_held += 1
        due = self.steps_held >= interval or any(finish for _, _, finish in self.events)
        if self.events and (due or not self.handed_on):
            self.on_events(self.events)
            self.events, self.steps_held, self.handed_on = [], 0, True


class Engine:
    """The loaded model, the queue, and the thread that decodes the batch."""

    def __init__(self, checkpoint: Checkpoint, settings: ServeSettings, name: str) -> None:
        model: LanguageModel = checkpoint.model.eval()
        self.batched = model.supports_kv_cache
        # few rows a step from the cache: products of few rows, faster on some CPUs
        self.model = with_fast_matvec(model) if self.batched else model
        self.tokenizer = checkpoint.tokenizer
        self.block_size = checkpoint.config.model.block_size
        self.device = next(model.parameters()).device
        self.settings = settings
        self.name = name
        self.metrics = Metrics()
        self.waiting: deque[Job] = deque()
        self.jobs: list[Job] = []
        self.slots: list[Row] = []  # slots[i]: the row in row i of the ragged cache
        self.cache = model.new_cache(settings.max_batch).make_ragged() if self.batched else None
        self.wakeup = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="tinygpt-decode", daemon=True)
        self.thread.start()

    def plan(self, request: CompletionRequest) -> Plan:
        """Encode and check a request against the caps (400s), before it is queued."""
        if request.max_tokens > self.settings.max_tokens:
            raise ApiError(
                400,
                f"max_tokens {request.max_tokens} is over this server's cap of "
                f"{self.settings.max_tokens}",
                param="max_tokens",
            )
        count = len(request.prompts) * request.n
        if count > self.settings.max_batch:
            raise ApiError(
                400,
                f"{count} choices (prompts x n) are over this server's --max-batch of "
                f"{self.settings.max_batch}",
                param="n",
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
        return Plan(
            prompts=prompts,
            prompt_tokens=prompt_tokens,
            sampling=sampling,
            stops=request.stops,
            deadline=time.monotonic() + self.settings.deadline_s,
            choices=[ChoiceState(i) for i in range(count)],
        )

    async def start(self, plan: Plan, on_events: Listener) -> asyncio.Future:
        """Queue the request (429 when the batch and the queue are full); the future is
        done when its last row has left the batch."""
        job = Job(plan, on_events, Future(), time.monotonic())
        with self.wakeup:
            self.waiting = deque(j for j in self.waiting if not j.plan.cancel.is_set())
            rows = sum(j.width for j in (*self.jobs, *self.waiting)) + job.width
            if len(self.waiting) >= self.settings.queue and rows > self.settings.max_batch:
                self.metrics.rejected += 1
                raise ApiError(
                    429,
                    "the server is busy: the batch and the queue are full",
                    kind="rate_limit_error",
                    code="server_busy",
                    headers={"Retry-After": "1"},
                )
            self.waiting.append(job)
            self.metrics.queued = len(self.waiting)
            self.wakeup.notify()
        return asyncio.wrap_future(job.future)

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        self.thread.join(timeout=10)

    # --- the decoding thread --------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.wakeup:
                while not self.jobs and not self.waiting and not self.closed:
                    self.wakeup.wait()
                if self.closed:
                    for job in (*self.jobs, *self.waiting):
                        job.future.cancel()
                    return
                admitted = self._admit()
            try:
                with torch.inference_mode():
                    for job in admitted:
                        self._prefill(job)
                    self._step()
            except Exception as exc:  # a bug of ours: its requests fail (500), the server lives
                log.exception("generation failed")
                for job in self.jobs:
                    job.future.set_exception(exc)
                self.jobs, self.slots = [], []
                self.metrics.active_rows = 0

    def _admit(self) -> list[Job]:
        """The waiting requests that fit in the batch now, first come first served."""
        admitted = []
        rows = sum(job.width for job in self.jobs)
        while self.waiting:
            job = self.waiting[0]
            if job.plan.cancel.is_set():
                self.waiting.popleft().future.set_result(None)
                continue
            if rows + job.width > self.settings.max_batch:
                break
            rows += self.waiting.popleft().width
            admitted.append(job)
        self.metrics.queued = len(self.waiting)
        return admitted

    def _prefill(self, job: Job) -> None:
        """Read a newcomer's prompts (each with its n rows, as `tinygpt sample` does) and
        seat its rows in the batch."""
        sampling, n = job.plan.sampling, job.plan.sampling.num_samples
        for p, ids in enumerate(job.plan.prompts):
            idx = torch.tensor([ids] * n, dtype=torch.long, device=self.device)
            generators = seeded_generators(sampling.seed, n, self.device)
            decoder = None
            if self.cache is not None:
                alone = self.model.new_cache(n)
                logits = self.model(idx, cache=alone)[0][:, -1]  # (n, V)
                for i in range(n):
                    self.cache.copy_row(len(self.slots) + i, alone, i)
            else:
                decoder = Decoder(self.model, self.block_size, False, sampling.window)
                logits = decoder.start(idx)
            choices = job.plan.choices[p * n : (p + 1) * n]
            rows = [
                Row(c, RowText(c.index, self.tokenizer, job.plan.stops), g, list(ids), x)
                for c, g, x in zip(choices, generators, logits, strict=True)
            ]
            if decoder is None:
                self.slots += rows
            job.groups.append(Group(rows, decoder))
        self.jobs.append(job)

    def _step(self) -> None:
        """One token for every row: draw it, show its text, and read it into the model."""
        drawn = 0
        for job in list(self.jobs):
            if job.plan.cancel.is_set():  # the client left: its rows go, silently
                for row in job.rows:
                    row.done = True
                continue
            for group in job.groups:
                drawing = group.drawing()
                if not drawing:
                    continue
                logits = torch.stack([row.logits for row in drawing])
                tokens = sample_next_token(
                    logits, job.plan.sampling, [r.generator for r in drawing]
                )
                for row, token in zip(drawing, tokens.tolist(), strict=True):
                    row.window.append(token)
                    if not row.done:
                        drawn += 1
                        self._show(job, row, token)
            if job.first_token_ms is None:
                job.first_token_ms = (time.monotonic() - job.arrived) * 1000
                self.metrics.first_tokens_ms.append(job.first_token_ms)
            if time.monotonic() > job.plan.deadline:  # ends after the token it passed in
                for row in job.rows:
                    if not row.done:
                        job.emit(row, row.text.end())
            job.hand_on(self.settings.stream_interval)
        self.metrics.step(drawn)
        self._leave()
        self._read_tokens()

    def _show(self, job: Job, row: Row, token: int) -> None:
        if (piece := row.text.feed(token)) is not None:
            job.emit(row, piece)
        if not row.done and row.text.tokens == job.plan.sampling.max_new_tokens:
            job.emit(row, row.text.end())

    def _leave(self) -> None:
        """Rows that are done leave the batch; requests whose rows all left are answered.
        The rows that stay move up, in order, so the batch is the cache's first rows."""
        if self.cache is not None:
            staying = [row for row in self.slots if not row.done]
            for new, old in enumerate(i for i, row in enumerate(self.slots) if not row.done):
                if new != old:
                    self.cache.copy_row(new, self.cache, old)
            self.slots = staying
        for job in [job for job in self.jobs if all(row.done for row in job.rows)]:
            self.jobs.remove(job)
            self.metrics.requests_served += 1
            job.future.set_result(None)
        self.metrics.active_rows = sum(1 for job in self.jobs for row in job.rows if not row.done)

    def _read_tokens(self) -> None:
        """Each row's newest token into the model: for a cached model one forward pass for
        the whole batch, each row at its own position; a row whose window is full first
        shifts it (as `tinygpt sample` does) and reads its kept tokens again, alone."""
        for job in self.jobs:
            for group in job.groups:
                if group.decoder is not None and group.drawing():
                    tokens = torch.tensor([row.window[-1] for row in group.rows])
                    for row, logits in zip(group.rows, group.decoder.step(tokens), strict=True):
                        row.logits = logits
        if self.cache is None or not self.slots:
            return
        keep = window_keep(self.block_size, SampleConfig.window)  # requests do not choose
        for slot, row in enumerate(self.slots):
            if len(row.window) > self.block_size:
                row.window = row.window[-keep:]
                self._reread(slot, row.window[:-1])
        tokens = torch.tensor([[row.window[-1]] for row in self.slots], device=self.device)
        logits = self.model(tokens, cache=self.cache.first_rows(len(self.slots)))[0]  # (B, 1, V)
        for row, row_logits in zip(self.slots, logits[:, -1], strict=True):
            row.logits = row_logits

    def _reread(self, slot: int, tokens: list[int]) -> None:
        """Row `slot` of the cache holds `tokens` alone, read afresh."""
        assert self.cache is not None and self.cache.lengths is not None
        self.cache.lengths[slot] = 0
        if tokens:
            alone = self.model.new_cache(1)
            self.model(torch.tensor([tokens], device=self.device), cache=alone)
            self.cache.copy_row(slot, alone, 0)
