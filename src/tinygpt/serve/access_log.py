"""One line per request for the operator, in the shape of uvicorn's access log: when, the
client, the request line, the status, the tokens read and generated, and the milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AccessLog:
    """A plain ASGI middleware around the whole app, so that refusals (401, 413, 429) are
    logged too; a streamed answer is logged when its stream ends. The prompt's text is
    left out unless `prompts` (it may be private); the route leaves the request's plan and
    prompts in the scope's state for this log to read."""

    def __init__(self, app: ASGIApp, write: Callable[[str], None], prompts: bool) -> None:
        self.app, self.write, self.prompts = app, write, prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.monotonic(), 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.write(self.line(scope, status or 500, time.monotonic() - start))

    def line(self, scope: Scope, status: int, seconds: float) -> str:
        host_port = scope.get("client")
        client = f"{host_port[0]}:{host_port[1]}" if host_port else "-"
        request = f'"{scope["method"]} {scope["path"]} HTTP/{scope.get("http_version", "1.1")}"'
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"{when} {client} - {request} {status}"
        state = scope.get("state", {})
        if (plan := state.get("plan")) is not None:
            text += f" prompt {plan.prompt_tokens} tokens, generated {plan.completion_tokens}"
        text += f", {1000 * seconds:.0f} ms"
        if self.prompts and "prompts" in state:
            text += f" prompt={state['prompts']!r}"
        return text
