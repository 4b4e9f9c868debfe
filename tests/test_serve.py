"""`tinygpt serve` against a real uvicorn server on 127.0.0.1: the official OpenAI client,
the stream's shape, exact usage, every error status, slots freed when clients leave, and
fuzzed request bodies."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from tinygpt.checkpoint import load_checkpoint  # noqa: E402
from tinygpt.cli import main  # noqa: E402
from tinygpt.config import SampleConfig  # noqa: E402
from tinygpt.generate import sample  # noqa: E402
from tinygpt.serve.app import create_app  # noqa: E402
from tinygpt.serve.engine import Engine  # noqa: E402
from tinygpt.serve.settings import ServeSettings  # noqa: E402

from .conftest import wait_until  # noqa: E402

MODEL = "short"  # the run directory's name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(run_dir: Path, **guards) -> Iterator[str]:
    """A real uvicorn server for `run_dir` in a thread; yields its base URL."""
    engine = Engine(load_checkpoint(run_dir), ServeSettings(**guards), MODEL)
    port = free_port()
    config = uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="error")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
        engine.close()


@pytest.fixture(scope="module")
def base_url(run_dir: Path) -> Iterator[str]:
    with server(run_dir, max_tokens=2_000_000, deadline_s=120) as url:
        yield url


def client(base_url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


def sampled(run_dir: Path, prompt: str, **values) -> list[str]:
    """What `tinygpt sample` gives: the texts after the prompt."""
    texts = sample(load_checkpoint(run_dir), prompt, SampleConfig(**values)).texts()
    return [text[len(prompt) :] for text in texts]


def metrics(base_url: str) -> dict[str, int]:
    return httpx.get(f"{base_url}/metrics").json()


def wait_idle(base_url: str, within: float) -> float:
    """Seconds until no request is generating (fails after `within`)."""
    start = time.monotonic()
    while metrics(base_url)["active_rows"]:
        assert time.monotonic() - start < within, f"still active after {within} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_openai_client_gets_the_text_of_tinygpt_sample(base_url: str, run_dir: Path) -> None:
    api = client(base_url)
    whole = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=60, seed=7)
    expected = sampled(run_dir, "ROMEO:", max_new_tokens=60, seed=7)[0]
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "length"
    assert whole.object == "text_completion" and whole.model == MODEL
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (6, 60)
    assert whole.usage.total_tokens == 66
    chunks = list(
        api.completions.create(
            model=MODEL,
            prompt="ROMEO:",
            max_tokens=60,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    # how many chunks carry it depends on timing: steps the client has not read yet are sent
    # as one chunk (streaming in several chunks: the stream-interval test below)
    assert "".join(texts) == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 60


def test_several_prompts_and_samples_are_choices(base_url: str, run_dir: Path) -> None:
    response = client(base_url).completions.create(
        model=MODEL, prompt=["ROMEO:", "JULIET:"], n=2, max_tokens=20, seed=3
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    romeo = sampled(run_dir, "ROMEO:", max_new_tokens=20, seed=3, num_samples=2)
    juliet = sampled(run_dir, "JULIET:", max_new_tokens=20, seed=3, num_samples=2)
    assert [c.text for c in response.choices] == romeo + juliet
    assert response.usage.prompt_tokens == 6 + 7 and response.usage.completion_tokens == 80


def test_stop_strings_end_a_choice(base_url: str, run_dir: Path) -> None:
    whole = sampled(run_dir, "", max_new_tokens=300, seed=11)[0]
    stop = whole[40:43]  # three characters it is sure to meet
    response = client(base_url).completions.create(
        model=MODEL, prompt="", max_tokens=300, seed=11, stop=[stop, "\u4e2d"]
    )
    (choice,) = response.choices
    assert choice.finish_reason == "stop" and choice.text == whole[: whole.index(stop)]
    assert response.usage.completion_tokens == whole.index(stop) + len(stop)  # one a character


def test_the_stream_ends_with_done(base_url: str) -> None:
    body = {"prompt": "A", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "text_completion" for e in events[:-1])


def test_models_health_and_the_playground(base_url: str) -> None:
    models = httpx.get(f"{base_url}/v1/models").json()
    assert models["data"][0]["id"] == MODEL
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}
    page = httpx.get(f"{base_url}/").text
    assert "<script>" in page and f"tinygpt playground: {MODEL}" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "A", "max_tokens": 5, "temprature": 1}, "temprature"),  # unknown field
        ({"prompt": "A", "max_tokens": "5"}, "max_tokens"),  # wrong type
        ({"prompt": "A", "temperature": 7.5}, "temperature"),  # out of range
        ({"prompt": "A", "n": 0}, "n"),
        ({"prompt": "床前", "max_tokens": 5}, "prompt"),  # outside the vocabulary
        ({"prompt": "A" * 3000, "max_tokens": 5}, "prompt"),  # over the prompt cap
        ({"prompt": "A", "max_tokens": 3_000_000}, "max_tokens"),  # over the max_tokens cap
        ({"prompt": "A", "stop": [""]}, "stop"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_bad_fields_are_400s_in_openai_shape(base_url: str, body: dict, param: str) -> None:
    response = httpx.post(f"{base_url}/v1/completions", json=body)
    assert_openai_error(response, 400, param)


def test_other_errors_have_their_status(base_url: str) -> None:
    url = f"{base_url}/v1/completions"
    assert_openai_error(httpx.post(url, content=b"{not json"), 400)
    assert_openai_error(httpx.post(url, json=[1, 2]), 400)
    response = httpx.post(url, json={"model": "gpt-4", "prompt": "A"})
    assert assert_openai_error(response, 404, "model")["code"] == "model_not_found"
    big = {"prompt": "A", "padding": "x" * 70_000}
    assert_openai_error(httpx.post(url, json=big), 413)
    chunked = httpx.post(url, content=iter([b'{"prompt": "', b"x" * 70_000, b'"}']))
    assert_openai_error(chunked, 413)  # no Content-Length: counted as it comes
    assert_openai_error(httpx.get(f"{base_url}/nowhere"), 404)


def test_a_key_guards_everything_but_health(run_dir: Path) -> None:
    with server(run_dir, api_key="s3cret") as url:
        body = {"prompt": "A", "max_tokens": 3}
        assert_openai_error(httpx.post(f"{url}/v1/completions", json=body), 401)
        wrong = {"Authorization": "Bearer nope"}
        assert_openai_error(httpx.post(f"{url}/v1/completions", json=body, headers=wrong), 401)
        assert_openai_error(httpx.get(f"{url}/metrics"), 401)
        assert httpx.get(f"{url}/health").status_code == 200
        answer = client(url, key="s3cret").completions.create(model=MODEL, prompt="A", max_tokens=3)
        assert answer.usage.completion_tokens == 3


def test_a_full_server_answers_429_with_retry_after(run_dir: Path) -> None:
    with server(run_dir, max_batch=1, queue=0, max_tokens=10**7, deadline_s=60) as url:
        long = {"prompt": "A", "max_tokens": 10**7, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=long) as first:
            lines = first.iter_lines()  # kept: dropping it would close the stream
            next(lines)  # generating: the one slot is taken
            response = httpx.post(f"{url}/v1/completions", json={"prompt": "B"})
            assert_openai_error(response, 429)
            assert response.headers["retry-after"] == "1"
            assert metrics(url)["rejected"] == 1
            started = time.monotonic()
            assert httpx.get(f"{url}/health").status_code == 200
            assert time.monotonic() - started < 0.5  # generation does not block the loop
        wait_idle(url, within=2)


def test_a_streaming_client_that_leaves_frees_its_slot(base_url: str) -> None:
    body = {"prompt": "A", "max_tokens": 10**6, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body) as response:
        lines = response.iter_lines()  # kept: dropping it would close the stream
        next(lines)
        assert metrics(base_url)["active_rows"] == 1
    assert wait_idle(base_url, within=1.5) < 1.5  # one token step plus a second


def test_a_waiting_client_that_leaves_frees_its_slot(base_url: str) -> None:
    body = json.dumps({"prompt": "A", "max_tokens": 10**6}).encode()
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 5
        while metrics(base_url)["active_rows"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert wait_idle(base_url, within=1.5) < 1.5


def test_the_deadline_ends_a_request_with_length(run_dir: Path) -> None:
    with server(run_dir, max_tokens=10**7, deadline_s=0.5) as url:
        started = time.monotonic()
        answer = client(url).completions.create(model=MODEL, prompt="A", max_tokens=10**7)
        assert time.monotonic() - started < 5
        assert answer.choices[0].finish_reason == "length"
        assert 0 < answer.usage.completion_tokens < 10**7


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "model"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.dictionaries(st.sampled_from([*FIELDS, "stream", "extra"]), JSON_VALUES, max_size=6)
    | JSON_VALUES
)
def test_fuzzed_bodies_never_get_a_500(fuzz_url: str, body) -> None:
    response = httpx.post(f"{fuzz_url}/v1/completions", json=body, timeout=30)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzz_url(run_dir: Path) -> Iterator[str]:
    with server(run_dir, max_tokens=50, max_prompt_tokens=200) as url:
        yield url
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # still answering


def test_binding_beyond_loopback_without_a_key_warns(run_dir: Path, shakespeare) -> None:
    port = free_port()
    command = [sys.executable, "-m", "tinygpt", "serve", str(run_dir), "--host", "0.0.0.0"]
    child = subprocess.Popen(
        [*command, "--port", str(port)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = child.stderr.readline()
        assert "without --api-key" in line and "0.0.0.0" in line
    finally:
        child.terminate()
        child.wait(timeout=10)


@contextmanager
def served(run_dir: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`tinygpt serve RUN_DIR OPTIONS...` as a child process, once it answers /health:
    (its base URL, the process, whose stdout is a pipe)."""
    port = free_port()
    command = [sys.executable, "-m", "tinygpt", "serve", str(run_dir), "--port", str(port)]
    child = subprocess.Popen([*command, *options], stdout=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/health"), child, "the server")
        yield base, child
    finally:
        child.terminate()
        child.wait(timeout=10)


def test_the_access_log_has_a_line_per_request_and_quiet_has_none(run_dir: Path, shakespeare):
    asked = {"prompt": "ROMEO:", "max_tokens": 7, "seed": 1}
    with served(run_dir, "--log-prompts") as (base, child):
        assert httpx.post(f"{base}/v1/completions", json=asked).status_code == 200
        assert httpx.post(f"{base}/v1/completions", json={"max_tokens": -1}).status_code == 400
        child.terminate()
        lines = child.communicate(timeout=10)[0].splitlines()
    completion = next(line for line in lines if '"POST /v1/completions HTTP/1.1" 200' in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 127\.0\.0\.1:\d+ - ", completion)
    assert "prompt 6 tokens, generated 7" in completion and "prompt=['ROMEO:']" in completion
    assert re.search(r", \d+ ms", completion)
    assert any('"POST /v1/completions HTTP/1.1" 400' in line for line in lines)
    assert any('"GET /health HTTP/1.1" 200' in line for line in lines)
    with served(run_dir, "--quiet") as (base, child):
        assert httpx.post(f"{base}/v1/completions", json=asked).status_code == 200
        child.terminate()
        printed = child.communicate(timeout=10)[0]
    assert printed.startswith("serving ") and "/v1/completions" not in printed
    with served(run_dir) as (base, child):  # the default: tokens, never the prompt's text
        httpx.post(f"{base}/v1/completions", json=asked)
        child.terminate()
        printed = child.communicate(timeout=10)[0]
    assert "generated 7" in printed and "ROMEO" not in printed


def test_the_served_model_name_is_what_clients_see_and_ask_for(run_dir: Path, shakespeare) -> None:
    with served(run_dir, "--served-model-name", "bard-v1") as (base, child):
        line = child.stdout.readline()  # printed once the model is loaded
        assert line.startswith("serving bard-v1 ("), line
        models = httpx.get(f"{base}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["bard-v1"]
        asked = {"prompt": "RO", "max_tokens": 3, "seed": 1}
        named = httpx.post(f"{base}/v1/completions", json={**asked, "model": "bard-v1"})
        unnamed = httpx.post(f"{base}/v1/completions", json=asked)
        assert named.status_code == unnamed.status_code == 200
        assert named.json()["model"] == "bard-v1"
        assert named.json()["choices"][0]["text"] == unnamed.json()["choices"][0]["text"]
        other = httpx.post(f"{base}/v1/completions", json={**asked, "model": run_dir.name})
        assert assert_openai_error(other, 404, "model")["code"] == "model_not_found"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_cors_is_off_unless_origins_are_given(base_url: str, run_dir: Path) -> None:
    preflight = {
        "Origin": "https://example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    response = httpx.options(f"{base_url}/v1/completions", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    with server(run_dir, cors_origins=("https://example.org",)) as url:
        response = httpx.options(f"{url}/v1/completions", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://example.org"
        other = httpx.options(
            f"{url}/v1/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_serve_command_errors_are_one_line(cli, run_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli("serve", run_dir, "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1
    code, _, err = cli("serve", run_dir, "--max-batch", "0")
    assert code == 2 and "--max-batch must be at least 1" in err
    code, _, err = cli("serve", run_dir, "--served-model-name", " ")
    assert code == 2 and "--served-model-name must not be empty" in err and err.count("\n") == 1
    code, _, err = cli("serve", run_dir.parent / "missing", "--port", free_port())
    assert code == 2 and err.count("\n") == 1


def test_the_playground_escapes_the_model_name(run_dir: Path) -> None:
    from fastapi.testclient import TestClient

    engine = Engine(load_checkpoint(run_dir), ServeSettings(), '<script>alert("x")</script>')
    page = TestClient(create_app(engine)).get("/").text
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    engine.close()


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory: pytest.TempPathFactory, shakespeare_home: Path) -> Path:
    """A short cpu-fast run: a GPT with a KV cache (the batched path), rotary, smear and
    the pair table, and a context of 64 that long answers slide past."""
    out = tmp_path_factory.mktemp("runs") / "fast"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGPT_HOME", str(shakespeare_home))
        main(["train", "--steps", "40", "--train.sample_tokens", "0", "--out", str(out)])
    return out


def test_concurrent_clients_each_get_the_text_of_tinygpt_sample(gpt_run: Path) -> None:
    """Eight streaming clients at once, joining and leaving the batch at different steps
    with their own prompts, seeds, settings, stop strings and lengths (some past the
    context of 64): each gets what `tinygpt sample` gives it alone."""
    asks = [
        {"prompt": "ROMEO:", "max_tokens": 150, "seed": 1},
        {"prompt": "", "max_tokens": 40, "seed": 2, "temperature": 0.7},
        {"prompt": "A", "max_tokens": 90, "seed": 3, "top_k": 5},
        {"prompt": "KING RICHARD III:\nNow is", "max_tokens": 120, "seed": 4, "stop": ["\n\n"]},
        {"prompt": "To be", "max_tokens": 10, "seed": 5, "temperature": 0},
        {"prompt": "First Citizen:", "max_tokens": 70, "seed": 6, "top_p": 0.9, "stop": ["e"]},
        {"prompt": "Q", "max_tokens": 200, "seed": 7, "n": 2},
        {"prompt": "JULIET:", "max_tokens": 33, "seed": 8, "stop": [":", "!"]},
    ]
    checkpoint = load_checkpoint(gpt_run)
    expected = []
    for ask in asks:
        values = {"max_new_tokens": ask["max_tokens"], "seed": ask["seed"]}
        values |= {k: ask[k] for k in ("temperature", "top_k", "top_p") if k in ask}
        values["num_samples"] = ask.get("n", 1)
        samples = sample(checkpoint, ask["prompt"], SampleConfig(**values), ask.get("stop", ()))
        expected.append([text[len(ask["prompt"]) :] for text in samples.texts()])
    assert any(
        "stop" in ask and len(e[0]) < ask["max_tokens"]
        for ask, e in zip(asks, expected, strict=False)
    )

    def stream(url: str, ask: dict, delay: float) -> list[str]:
        time.sleep(delay)  # joins a batch already decoding
        texts = [""] * ask.get("n", 1)
        body = {**ask, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        texts[choice["index"]] += choice["text"]
        return texts

    with server(gpt_run, max_batch=6, queue=8) as url:
        with ThreadPoolExecutor(len(asks)) as pool:
            answers = list(pool.map(stream, [url] * len(asks), asks, [i * 0.05 for i in range(8)]))
        seen = metrics(url)
    assert answers == expected
    assert seen["requests_served"] == len(asks) and seen["rejected"] == 0
    assert seen["tokens_generated"] >= sum(len(e[0]) for e in expected)
    assert seen["first_token_ms_p50"] > 0 and seen["active_rows"] == 0


def test_metrics_show_the_batch_while_it_decodes(gpt_run: Path) -> None:
    with server(gpt_run, max_batch=2, queue=4, max_tokens=10**6) as url:
        body = {"prompt": "A", "max_tokens": 10**6, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "n": 2}) as first:
            lines = first.iter_lines()  # kept: dropping it would close the stream
            next(lines)  # decoding: the two rows fill the batch
            with httpx.stream("POST", f"{url}/v1/completions", json=body):
                wait_until_metric(url, "queued", 1)  # the second waits for room
                shown = metrics(url)
                assert shown["active_rows"] == 2 and shown["tokens_per_second"] > 0
        wait_idle(url, within=3)  # both left: their rows and their place in the queue


def wait_until_metric(url: str, name: str, value: float, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while metrics(url)[name] != value:
        assert time.monotonic() < deadline, f"{name} is not {value} within {within} s"
        time.sleep(0.02)


def test_a_stream_interval_sends_fewer_larger_chunks_of_the_same_text(gpt_run: Path) -> None:
    """--stream-interval 8: the first token's text at once, then a chunk every 8 steps (a
    character each here), and the text `tinygpt sample` gives."""
    expected = sampled(gpt_run, "ROMEO:", max_new_tokens=100, seed=3)[0]
    body = {"prompt": "ROMEO:", "max_tokens": 100, "seed": 3, "stream": True}
    with server(gpt_run, stream_interval=8) as url:
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    lines = response.text.splitlines()
    chunks = [json.loads(line[6:])["choices"][0] for line in lines if line.startswith("data: {")]
    assert "".join(chunk["text"] for chunk in chunks) == expected
    assert len(chunks[0]["text"]) == 1 and chunks[-1]["finish_reason"] == "length"
    assert len(chunks) <= 1 + -(-99 // 8)  # every token alone would be 100 chunks
