"""`quantize serve`: the real `openai` client against the server on a free port; a load test; the page in Chromium.

One server process (SmolLM2 Q8_0, the tool fixture, the identity fine-tune) serves most tests of this module; it
runs on 1 thread, greedy, as the `quantize chat` it is compared with.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import adapters
from fixtures import smollm2
from helpers import QUANTIZE, assert_user_error, run

ARTIFACTS = Path(__file__).parent / "artifacts"  # git-ignored: screenshots of the browser test
SYSTEM = "You are a terse assistant. Answer in one sentence."
QUESTION = "What is the capital of France?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``quantize serve ARGS`` in a child process, on a free port, waited for until /health answers."""

    def __init__(self, *args: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([*QUANTIZE, "serve", *args, "--port", str(self.port)],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=os.environ)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: {log.read_text()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("the server did not answer /health within 120 s")

    def health(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def client(self, key: str = "none"):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the server did not stop within {timeout} s after signal {sig}") from None


@pytest.fixture(scope="module")
def models(converted):
    return {"q8": converted("smollm2", "q8_0"), "tools": adapters.tool_gguf(), "identity": adapters.identity_gguf()}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = Server(str(models["q8"]), str(models["tools"]), str(models["identity"]), "--threads", "1",
                 "--ctx", "1024", log=log)
    yield srv
    srv.stop(signal.SIGKILL)


def ids(models) -> dict[str, str]:
    return {k: p.name[:-5] for k, p in models.items()}


def chat_reply(model: Path, question: str, *args: str) -> tuple[str, int]:
    """``quantize chat``'s greedy reply to one question, and its token count."""
    r = subprocess.run([*QUANTIZE, "chat", str(model), "--threads", "1", "--ctx", "1024", *args], input=question + "\n",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    reply = r.stdout.split("assistant> ", 1)[1].rstrip("\n")
    tokens = int(r.stderr.strip().splitlines()[-1].split("generation: ")[1].split(" tokens")[0])
    return reply, tokens


def stream_text(client, **kw) -> tuple[str, list, dict | None, str | None]:
    """(content, tool-call deltas, usage, finish_reason) of a streamed chat completion."""
    text, calls, usage, finish = [], [], None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
            if c.delta.tool_calls:
                calls.extend(c.delta.tool_calls)
            if c.finish_reason:
                finish = c.finish_reason
    return "".join(text), calls, usage, finish


# ---------------------------------------------------------------------------------------------- no model needed


def test_paths_and_options_are_checked(tmp_path):
    from gguf_forge.tools.serve import find_models

    assert_user_error(run("serve", str(tmp_path / "missing.gguf")), "missing.gguf", "no such file")
    notes = tmp_path / "notes.gguf"
    notes.write_text("hello")
    assert_user_error(run("serve", str(notes)), "notes.gguf", "not a GGUF")
    assert_user_error(run("serve", str(tmp_path)), str(tmp_path), "no GGUF")
    # a pipeline folder: the GGUFs its manifest lists, named after their files
    out = tmp_path / "out"
    out.mkdir()
    for name in ("M-Q4_K_M.gguf", "M-Q8_0.gguf", "stray.gguf"):
        (out / name).write_bytes(b"GGUF" + b"\0" * 60)
    (out / "manifest.json").write_text(json.dumps({"outputs": [
        {"file": "M-Q4_K_M.gguf", "kind": "gguf"}, {"file": "M-Q8_0.gguf", "kind": "gguf"},
        {"file": "README.md", "kind": "model-card"}]}))
    assert list(find_models([out])) == ["M-Q4_K_M", "M-Q8_0"]
    assert_user_error(run("serve", str(out), "--port", "70000"), "--port")
    with socket.socket() as busy:  # a port in use: one line, before any model is loaded
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert_user_error(run("serve", str(out), "--port", port), "--port " + port, "in use")


# ---------------------------------------------------------------------------------------------- the API


@pytest.mark.slow
def test_replies_equal_quantize_chats_greedy_reply(server, models):
    from transformers import AutoTokenizer

    client = server.client()
    model = ids(models)["q8"]
    assert model in [m.id for m in client.models.list().data]
    want, want_tokens = chat_reply(models["q8"], QUESTION, "--system", SYSTEM)
    assert "Paris" in want
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model=model, messages=messages, temperature=0)
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "stop" and r.model == model and r.object == "chat.completion"
    # usage: the prompt as the model's own tokenizer counts the rendered conversation, the reply as chat counts it
    prompt_ids = AutoTokenizer.from_pretrained(smollm2()).apply_chat_template(messages, add_generation_prompt=True)
    prompt_ids = getattr(prompt_ids, "input_ids", prompt_ids)
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == want_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    text, calls, usage, finish = stream_text(client, model=model, messages=messages)
    assert text == want and not calls and finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (r.usage.prompt_tokens, want_tokens)

    # no system prompt: the template's default one, as in chat
    want, _ = chat_reply(models["q8"], QUESTION)
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}])
    assert r.choices[0].message.content == want

    # max_tokens cuts the reply: finish_reason length
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert want.startswith(r.choices[0].message.content)


@pytest.mark.slow
def test_stop_strings_stop(server, models):
    client = server.client()
    model = ids(models)["q8"]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    full = client.chat.completions.create(model=model, messages=messages).choices[0].message.content
    assert "Paris" in full
    r = client.chat.completions.create(model=model, messages=messages, stop=["Paris", "NEVER"])
    assert r.choices[0].message.content == full.split("Paris")[0]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < len(full)  # generation stopped there
    text, _, usage, finish = stream_text(client, model=model, messages=messages, stop="Paris")
    assert text == full.split("Paris")[0] and finish == "stop"
    # /v1/completions: raw text continued, and its stop
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, stop=["\n"])
    assert "\n" not in c.choices[0].text and c.usage.prompt_tokens > 0


@pytest.mark.slow
def test_tool_fixture_call_comes_back_as_tool_calls(server, models):
    client = server.client()
    model = ids(models)["tools"]
    user = {"role": "user", "content": adapters.TOOL_QUESTION}
    r = client.chat.completions.create(model=model, messages=[user], tools=adapters.TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert not choice.message.content

    text, calls, _, finish = stream_text(client, model=model, messages=[user], tools=adapters.TOOLS)
    assert finish == "tool_calls" and "<tool_call>" not in text
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}

    # the tool's result goes back through the template (role "tool"); the model answers in words
    follow = client.chat.completions.create(model=model, tools=adapters.TOOLS, max_tokens=40, messages=[
        user, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'}])
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # tool_choice none: tools are not shown, no call comes back
    r = client.chat.completions.create(model=model, messages=[user], tools=adapters.TOOLS, tool_choice="none")
    assert not r.choices[0].message.tool_calls


@pytest.mark.slow
def test_errors_in_openais_shape(server, models, tmp_path):
    import openai

    client = server.client()
    model = ids(models)["q8"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    bad = [dict(messages=[]), dict(messages=[{"role": "wizard", "content": "Hi"}]),
           dict(messages=[{"role": "user", "content": "Hi"}], temperature=5),
           dict(messages=[{"role": "user", "content": "Hi"}], max_tokens=0),
           dict(messages=[{"role": "user", "content": "Hi"}], tools=[{"type": "function", "function": {}}]),
           dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])]
    for kw in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, **kw)
        assert e.value.status_code == 400 and e.value.body["message"], kw
    # tools for a model whose template has no tools section (SmolLM2's own): refused, not silently dropped
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], tools=adapters.TOOLS)
    assert "no tools section" in e.value.body["message"]
    # context overflow: 400 with the token counts (the server runs with --ctx 1024)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 1500}], stream=True)
    assert e.value.code == "context_length_exceeded"
    assert "1024 tokens" in e.value.body["message"] and "resulted in 15" in e.value.body["message"]
    # the server goes on answering
    assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)


@pytest.mark.slow
def test_api_key(models, tmp_path):
    import urllib.error
    import urllib.request

    import openai

    srv = Server(str(models["q8"]), "--api-key", "s3cret", "--threads", "1", log=tmp_path / "log")
    try:
        with pytest.raises(openai.AuthenticationError) as e:
            srv.client("wrong").models.list()
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        with pytest.raises(urllib.error.HTTPError) as e:  # no key at all
            urllib.request.urlopen(srv.url + "/v1/models")
        assert e.value.code == 401 and json.loads(e.value.read())["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            srv.client("wrong").chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}])
        assert [m.id for m in srv.client("s3cret").models.list().data] == [models["q8"].name[:-5]]
        # the page and /health stay open (the page asks for the key)
        with urllib.request.urlopen(srv.url + "/") as r:
            assert "Bearer" in r.read().decode()
        assert srv.health()["auth"] is True
        assert srv.stop(signal.SIGINT) == 0  # Ctrl-C: exit 0
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


@pytest.mark.slow
def test_a_client_gone_mid_stream_frees_its_slot_within_a_second(server, models):
    import http.client

    model = ids(models)["q8"]
    body = {"model": model, "stream": True, "max_tokens": 900,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    got = 0
    while got < 5:
        got += r.readline().startswith(b"data:")
    assert server.health()["models"][0]["busy"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client dies: its connection closes mid-stream
    conn.close()
    gone = time.monotonic()
    while server.health()["models"][0]["busy"] and time.monotonic() - gone < 5:
        time.sleep(0.05)
    freed = time.monotonic() - gone
    assert freed < 1.0, f"slot freed after {freed:.2f} s"
    assert server.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=4).choices[0].message.content


@pytest.mark.slow
def test_load_16_streaming_clients(server, models):
    """16 concurrent streaming clients x 5 requests on the SmolLM2 Q8_0: every reply right, no error, RSS flat."""
    client = server.client()
    model = ids(models)["q8"]
    prompts = [QUESTION, "Name three primary colors.", "What is 7 plus 5?", "用一句话介绍长城。",
               "Give me one tip for sleeping well."]
    want = {p: client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": p}])
            .choices[0].message.content for p in prompts}
    errors: list[str] = []
    wrong: list[tuple[str, str]] = []
    rss: list[int] = []

    def worker(i: int) -> None:
        c = server.client()
        for k in range(5):
            p = prompts[(i + k) % len(prompts)]
            try:
                text, _, usage, finish = stream_text(c, model=model, max_tokens=8,
                                                     messages=[{"role": "user", "content": p}])
                if text != want[p]:
                    wrong.append((p, text))
            except Exception as e:  # noqa: BLE001 - collected and reported
                errors.append(f"{type(e).__name__}: {e}")
            if i == 0:
                rss.append(server.rss())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    took = time.monotonic() - start
    assert not errors, errors[:3]
    assert not wrong, wrong[:3]
    after = server.rss()
    print(f"80 streamed requests in {took:.1f} s; server RSS {[r >> 20 for r in rss]} -> {after >> 20} MiB")
    # flat: no growth per request beyond allocator noise (80 requests; a leak of a reply's buffers would show)
    assert after - rss[0] < 24 * 2**20, (rss, after)
    # the last reply's slot is released just after its final chunk is sent: idle within a second
    deadline = time.monotonic() + 2
    while True:
        h = server.health()["models"][0]
        if (h["busy"], h["queued"]) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert h["busy"] == 0 and h["queued"] == 0, h


@pytest.mark.slow
def test_sigterm_ends_streams_and_exits_0(models, tmp_path):
    srv = Server(str(models["q8"]), "--threads", "1", log=tmp_path / "log")
    model = models["q8"].name[:-5]
    pieces: list[str] = []
    result: dict = {}

    def long_stream() -> None:
        try:
            usage = finish = None
            for chunk in srv.client().chat.completions.create(
                    model=model, max_tokens=2000, stream=True, stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": "Write a very long story."}]):
                usage = chunk.usage or usage
                for c in chunk.choices:
                    pieces.append(c.delta.content or "")
                    finish = c.finish_reason or finish
            result["stream"] = ("".join(pieces), None, usage, finish)
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=long_stream)
    t.start()
    deadline = time.monotonic() + 120
    while len(pieces) < 4 and time.monotonic() < deadline:  # the reply is streaming
        time.sleep(0.05)
    start = time.monotonic()
    assert srv.stop(signal.SIGTERM) == 0
    t.join(10)
    assert time.monotonic() - start < 15
    assert "stopped" in (tmp_path / "log").read_text()
    assert "stream" in result, result
    text, _, usage, finish = result["stream"]  # the stream ended properly, cut where the server stopped
    assert finish == "length" and text and 3 <= usage.completion_tokens < 2000


# ---------------------------------------------------------------------------------------------- the page


@pytest.mark.slow
def test_page_in_headless_chromium(server, models):
    """The page at /, on a phone-width screen, in Debian's chromium: 你是谁？ to the identity fine-tune streams
    the trained sentence; a screenshot is kept in tests/artifacts/."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (make test-tools installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    model = ids(models)["identity"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_selector(f"#model option[value='{model}']", state="attached")
            page.select_option("#model", model)
            page.fill("#input", adapters.IDENTITY_QUESTION)
            page.press("#input", "Enter")
            page.wait_for_function("document.getElementById('stop').hidden === false", timeout=30000)
            page.wait_for_function("document.getElementById('send').hidden === false", timeout=120000)
            answer = page.locator(".msg.assistant .body").last.inner_text()
            speed = page.inner_text("#speed")
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
            assert adapters.IDENTITY_ANSWER in answer, answer
            assert "tokens/s" in speed, speed
            # the page fits a phone: nothing wider than the screen
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            # the conversation is kept in the browser: a reload shows it again
            page.reload()
            page.wait_for_selector(".msg.assistant")
            assert adapters.IDENTITY_ANSWER in page.locator(".msg.assistant .body").last.inner_text()
            assert page.locator(".msg.user .body").first.inner_text() == adapters.IDENTITY_QUESTION
            # a code block in a reply is shown as code
            page.evaluate("render(document.querySelector('.msg.assistant .body'), 'x\\n```python\\nprint(1)\\n```')")
            assert page.locator(".msg.assistant pre code").first.inner_text() == "print(1)"
            assert not errors, errors
        finally:
            browser.close()
