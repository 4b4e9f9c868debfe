"""The server's guards, with their defaults (torch-free: the command line reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from tinygpt.errors import UserError


@dataclass(frozen=True)
class ServeSettings:
    """The server's guards; every one has a command-line flag (`tinygpt serve --help`)."""

    max_batch: int = 16  # rows (choices of requests) decoded together, one step for all
    stream_interval: int = 1  # a stream's chunks after its first carry this many steps' text
    queue: int = 8  # requests waiting for room in the batch; more get 429
    max_prompt_tokens: int = 2048
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    deadline_s: float = 60.0  # a request's generation ends here, finish_reason "length"
    max_body_bytes: int = 64 * 1024
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    log_prompts: bool = False  # the access log shows prompts' text (they may be private)

    def __post_init__(self) -> None:
        positive = ("max_batch", "stream_interval", "max_prompt_tokens", "max_tokens")
        for name in (*positive, "max_body_bytes"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.queue < 0:
            raise UserError("--queue must not be negative")
        if self.deadline_s <= 0:
            raise UserError("--deadline must be positive")
