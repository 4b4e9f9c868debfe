"""The HTTP server: OpenAI's /v1/completions (whole or streamed), /v1/models, /health, a
metrics view, and the playground page, behind the guards of `ServeSettings`.

Anything a client sends that is wrong gets OpenAI's error shape and a 4xx status, never a
traceback: a bad field 400, a missing or wrong key 401, an unknown model 404, an oversized
body 413, a full server 429 (with Retry-After).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tinygpt.serve import protocol
from tinygpt.serve.access_log import AccessLog
from tinygpt.serve.engine import Engine, Event, Plan
from tinygpt.serve.protocol import ApiError

log = logging.getLogger("tinygpt.serve")
PUBLIC_PATHS = ("/health", "/")  # the page asks for the key itself


def create_app(engine: Engine, log_line: Callable[[str], None] | None = None) -> FastAPI:
    """The app; `log_line` gets one line per request (serve's access log), none if None."""
    app = FastAPI(title="tinygpt", docs_url=None, redoc_url=None, openapi_url=None)
    settings = engine.settings
    app.state.engine = engine
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    if settings.api_key:
        app.add_middleware(KeyGuard, key=settings.api_key)
    if log_line is not None:  # the outermost: refusals are logged too
        app.add_middleware(AccessLog, write=log_line, prompts=settings.log_prompts)

    app.add_exception_handler(ApiError, lambda _, exc: error_response(exc))
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> dict[str, float]:
        return engine.metrics.view()

    @app.get("/v1/models")
    async def models() -> dict:
        model = {"id": engine.name, "object": "model", "created": 0, "owned_by": "tinygpt"}
        return {"object": "list", "data": [model]}

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> str:
        page = resources.files("tinygpt.serve").joinpath("playground.html")
        return page.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(engine.name))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request, settings.max_body_bytes)
        completion = protocol.parse_request(body)
        if completion.model not in (None, engine.name):
            message = f"no model {completion.model!r} here; this server has {engine.name!r}"
            raise ApiError(404, message, param="model", code="model_not_found")
        plan = engine.plan(completion)
        request.state.plan, request.state.prompts = plan, completion.prompts  # the access log's
        if completion.stream:
            return await stream(engine, plan, completion.include_usage)
        return await whole(engine, plan)

    return app


class KeyGuard:
    """401 without `Authorization: Bearer KEY`, except on the public paths. A plain ASGI
    middleware: it hands the request on untouched, so a client leaving is still seen."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "a valid API key is needed (Authorization: Bearer KEY)"
                error = error_response(ApiError(401, message, code="invalid_api_key"))
                await error(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 past `cap` bytes (whether or not it says its length)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise ApiError(413, f"the body is over {cap} bytes", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError(413, f"the body is over {cap} bytes", code="body_too_large")
    return bytes(body)


async def whole(engine: Engine, plan: Plan) -> WholeCompletion:
    future = await engine.start(plan, lambda events: None)  # a 429 is raised here
    return WholeCompletion(engine, plan, future)


class WholeCompletion(Response):
    """The response of a request that is not streamed: it waits for every choice while
    listening for the client to leave, which stops the generation at once."""

    def __init__(self, engine: Engine, plan: Plan, future: asyncio.Future) -> None:
        super().__init__()
        self.engine, self.plan, self.future = engine, plan, future

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.plan.cancel.set()

        listener = asyncio.create_task(listen())
        try:
            await self.future  # a bug of ours in the worker surfaces here, as a 500
        finally:
            listener.cancel()
        plan, request_id = self.plan, protocol.completion_id()
        choices = [protocol.choice(c.index, c.text, c.finish_reason) for c in plan.choices]
        body = {
            **protocol.envelope(request_id, self.engine.name, choices),
            "usage": protocol.usage(plan.prompt_tokens, plan.completion_tokens),
        }
        await JSONResponse(body)(scope, receive, send)


async def stream(engine: Engine, plan: Plan, include_usage: bool) -> StreamingResponse:
    """Server-sent events: a chunk per choice each time the engine hands text on (sent at
    once), the last of each choice carrying its finish_reason, the usage chunk if asked
    for, then [DONE]."""
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[list[Event] | None] = asyncio.Queue()

    def on_events(events: list[Event]) -> None:  # called on the decoding thread, once a step
        loop.call_soon_threadsafe(steps.put_nowait, events)

    future = await engine.start(plan, on_events)
    future.add_done_callback(lambda _: steps.put_nowait(None))
    request_id = protocol.completion_id()

    def chunk(index: int, text: str, finish: str | None) -> bytes:
        return protocol.sse(
            protocol.envelope(request_id, engine.name, [protocol.choice(index, text, finish)])
        )

    async def arrived() -> list[Event] | None:
        """The events of every step since the last call (None: the request is over): under
        load a chunk carries the text of several steps, not one event per token."""
        events = await steps.get()
        while events is not None and not steps.empty():
            more = steps.get_nowait()
            events = None if more is None else events + more
        return events

    async def body() -> AsyncIterator[bytes]:
        try:
            while (events := await arrived()) is not None:
                texts: dict[int, str] = {}  # each choice's text of these steps, in order
                finishes: dict[int, str] = {}
                for index, text, finish in events:
                    texts[index] = texts.get(index, "") + text
                    if finish:  # the engine hands a finish on with its choice's last text
                        finishes[index] = finish
                for index, text in texts.items():
                    yield chunk(index, text, finishes.get(index))
            if include_usage:
                usage = protocol.usage(plan.prompt_tokens, plan.completion_tokens)
                envelope = protocol.envelope(request_id, engine.name, [])
                yield protocol.sse({**envelope, "usage": usage})
            yield protocol.sse("[DONE]")
        finally:
            plan.cancel.set()  # the client left (or the stream ended): stop generating

    headers = {"Cache-Control": "no-cache"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(ApiError(exc.status_code, str(exc.detail), kind=kind))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug of ours: logged here, and the client gets no traceback."""
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "internal error", kind="server_error"))
