"""The OpenAI-compatible app: request checking, the generation threads, server-sent events, errors in OpenAI's shape.

A request waits (in order) for a free slot of its model, then one thread renders the conversation and generates
with that slot's session while the request's coroutine sends what comes; when the client goes away, or the server
is stopping, the thread stops at its next token and gives the slot back.
"""

import asyncio
import hmac
import json
import math
import signal
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator, Callable

from ...errors import ForgeError
from ..chat.session import ContextOverflow, Reply
from ..chat.toolcalls import check_tools
from .models import Model, ModelPool, Slot

MAX_STOP = 4  # OpenAI's limit on stop strings


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------- requests


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < lo or value > hi or (lo_open and value == lo):
        raise _bad(f"'{name}' must be a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}, got {value!r}", name)
    return float(value)


def _int(body: dict, name: str, lo: int, hi: int = 2**31 - 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(f"'{name}' must be an integer from {lo} to {hi}, got {value!r}", name)
    return value


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined); images and audio are refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"{where}: content part of type {kind!r} is not supported (text only)", "messages")
            out.append(part["text"])
        return "".join(out)
    raise _bad(f"{where}: content must be a string or a list of text parts", "messages")


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object", "messages")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise _bad(f"{where}: unknown role {role!r} (system, developer, user, assistant or tool)", "messages")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": _text(m.get("content"), where)}
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      and isinstance(c["function"].get("name"), str) for c in calls):
                raise _bad(f"{where}: tool_calls must be a list of {{\"function\": {{\"name\", \"arguments\"}}}}",
                           "messages")
            msg["tool_calls"] = calls
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if isinstance(m.get(key), str):
                    msg[key] = m[key]
        elif not isinstance(m.get("content"), (str, list)) and not msg.get("tool_calls"):
            raise _bad(f"{where}: content is missing", "messages")
        out.append(msg)
    return out


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
        raise _bad(f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    return [s for s in stops if s]


def _options(body: dict) -> dict[str, Any]:
    """The sampling options of a request (defaults: greedy, as ``quantize chat``)."""
    if body.get("n") not in (None, 1):
        raise _bad("only n=1 is supported", "n")
    max_tokens = _int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1)
    seed = _int(body, "seed", -(2**63), 2**64 - 1)
    opts = {"temp": _number(body, "temperature", 0.0, 0.0, 2.0), "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, True),
            "max_tokens": max_tokens, "seed": seed if seed is not None else int(time.time_ns() & 0xFFFFFFFF),
            "stop": _stop(body.get("stop"))}
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    return {"options": opts, "stream": stream, "include_usage": bool(so.get("include_usage"))}


def _tools(body: dict) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        return None
    try:
        tools = check_tools(tools, "tools")
    except ForgeError as e:
        raise _bad(str(e), "tools") from None
    if choice == "none":
        return None
    if isinstance(choice, dict):  # a named tool: only it is offered
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise _bad(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
        return chosen
    if choice not in (None, "auto", "required"):
        raise _bad("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                   "\"function\": {\"name\": ...}}", "tool_choice")
    return tools


# ---------------------------------------------------------------------------------------------- generation


class Job:
    """One request's generation in its own thread; events reach the coroutine through an asyncio queue:
    ``("start", prompt_tokens)``, ``("text", piece)``..., then ``("done", Reply)`` or ``("error", exception)``."""

    def __init__(self, pool: ModelPool, model: Model, slot: Slot, run: Callable[..., Reply]) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.pool, self.model, self.slot, self._run = pool, model, slot, run
        self.thread = threading.Thread(target=self._main, name=f"generate-{model.id}-{slot.index}", daemon=True)

    def start(self) -> None:
        self.model.busy += 1
        self.pool.running.add(self.thread)
        self.thread.start()

    def _emit(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _cancel(self) -> bool:
        return self.cancelled.is_set() or self.pool.stopping.is_set()

    def _main(self) -> None:
        try:
            try:
                session = self.pool.session(self.model, self.slot)
            except ForgeError as e:
                raise ApiError(500, f"could not load {self.model.id}: {e}", type="server_error") from None
            reply = self._run(session, on_start=lambda n: self._emit("start", n),
                              on_token=lambda s: self._emit("text", s), cancel=self._cancel)
            self._emit("done", reply)
        except BaseException as e:  # noqa: BLE001 - handed to the request, which answers it
            self._emit("error", e)
        finally:
            self.pool.running.discard(self.thread)
            try:
                self.loop.call_soon_threadsafe(self._release)
            except RuntimeError:  # the loop is closed: the server has stopped
                pass

    def _release(self) -> None:
        self.model.busy -= 1
        self.model.free.put_nowait(self.slot)


async def _acquire(model: Model) -> Slot:
    model.waiting += 1
    try:
        return await model.free.get()
    finally:
        model.waiting -= 1


def _error_of(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ContextOverflow):
        return ApiError(400, f"This model's maximum context length is {e.n_ctx} tokens. However, your messages "
                             f"resulted in {e.prompt_tokens} tokens. Please reduce the length of the messages.",
                        param="messages", code="context_length_exceeded")
    if isinstance(e, ForgeError):
        return ApiError(400, str(e))
    return ApiError(500, f"{type(e).__name__}: {e}", type="server_error")


# ---------------------------------------------------------------------------------------------- the app


def create_app(pool: ModelPool, api_key: str | None = None) -> Any:
    """The FastAPI app answering for ``pool``'s models; with ``api_key`` every ``/v1`` route needs
    ``Authorization: Bearer API_KEY``."""
    # imported here: every other `quantize` command starts without loading the web stack (no
    # ``from __future__ import annotations`` in this module, so FastAPI sees these classes in the annotations)
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        pool.start()
        try:
            yield
        finally:
            pool.close()  # waits for the generations still running (each stops at its next token)

    app = FastAPI(title="gguf-forge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    page = resources.files("gguf_forge.tools.serve").joinpath("static", "index.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Any:
        return JSONResponse(e.body(), status_code=e.status)

    @app.middleware("http")
    async def auth(request: Request, call_next: Callable) -> Any:
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                message = ("You didn't provide an API key: send 'Authorization: Bearer KEY'" if not given
                           else "Incorrect API key provided")
                return JSONResponse(ApiError(401, message, code="invalid_api_key").body(), status_code=401)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Any:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> Any:
        return {"status": "stopping" if pool.stopping.is_set() else "ok", "models": pool.status(),
                "auth": api_key is not None}

    @app.get("/v1/models")
    async def list_models() -> Any:
        return {"object": "list", "data": [_model_card(m) for m in pool.models.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        return _model_card(_model(model_id))

    def _model_card(m: Model) -> dict[str, Any]:
        return {"id": m.id, "object": "model", "created": m.created, "owned_by": "gguf-forge"}

    def _model(model_id: Any) -> Model:
        if not isinstance(model_id, str) or not model_id:
            raise _bad("'model' is required: one of GET /v1/models", "model")
        m = pool.get(model_id) or pool.get(model_id[:-5] if model_id.lower().endswith(".gguf") else "")
        if m is None:
            raise ApiError(404, f"The model '{model_id}' does not exist; models: {', '.join(pool.models)}",
                           param="model", code="model_not_found")
        return m

    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise _bad("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        return body

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await _body(request)
        model = _model(body.get("model"))
        messages = _messages(body.get("messages"))
        req = _options(body)
        tools = _tools(body)
        opts = req["options"]

        def run(session: Any, **kw: Any) -> Reply:
            return session.complete(messages, tools=tools, **opts, **kw)

        return await _respond(request, model, run, req, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await _body(request)
        model = _model(body.get("model"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise _bad("'prompt' must be a non-empty string", "prompt")
        req = _options(body)
        opts = req["options"]

        def run(session: Any, **kw: Any) -> Reply:
            return session.complete([], raw_prompt=prompt, **opts, **kw)

        return await _respond(request, model, run, req, chat=False)

    async def _respond(request: Request, model: Model, run: Callable[..., Reply], req: dict, chat: bool) -> Any:
        if pool.stopping.is_set():
            raise ApiError(503, "the server is stopping", type="server_error")
        slot = await _acquire(model)
        job = Job(pool, model, slot, run)
        job.start()
        try:
            kind, value = await job.events.get()
            if kind == "error":
                raise _error_of(value)
        except BaseException:
            job.cancelled.set()
            raise
        prompt_tokens = value
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req["stream"]:
            return StreamingResponse(_stream(job, model, rid, created, prompt_tokens, req["include_usage"], chat),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # not streamed: wait for the reply, stopping it if the client goes away meanwhile
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(job.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancelled.set()
                    continue
                if kind in ("done", "error"):
                    break
        except BaseException:
            job.cancelled.set()
            raise
        if kind == "error":
            raise _error_of(value)
        reply: Reply = value
        usage = _usage(prompt_tokens, reply)
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": reply.content if not reply.tool_calls
                                       else (reply.content or None)}
            if reply.tool_calls:
                message["tool_calls"] = reply.tool_calls
            choice = {"index": 0, "message": message, "finish_reason": _finish(reply), "logprobs": None}
            return {"id": rid, "object": "chat.completion", "created": created, "model": model.id,
                    "choices": [choice], "usage": usage, "system_fingerprint": None}
        return {"id": rid, "object": "text_completion", "created": created, "model": model.id,
                "choices": [{"index": 0, "text": reply.text, "finish_reason": _finish(reply), "logprobs": None}],
                "usage": usage}

    async def _stream(job: Job, model: Model, rid: str, created: int, prompt_tokens: int, include_usage: bool,
                      chat: bool) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict[str, Any] | str | None, finish: str | None = None) -> str:
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            data = {"id": rid, "object": obj, "created": created, "model": model.id, "choices": [choice]}
            if include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        sent: list[str] = []
        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    sent.append(value)
                    yield chunk({"content": value} if chat else value)
                    continue
                break
            if kind == "error":
                yield f"data: {json.dumps(_error_of(value).body())}\n\n"
                return
            reply: Reply = value
            done = "".join(sent)
            if chat and reply.tool_calls:
                calls = [{"index": i, **c} for i, c in enumerate(reply.tool_calls)]
                yield chunk({"tool_calls": calls})
            elif len(reply.text) > len(done) and reply.text.startswith(done):  # held back as a call that was none
                rest = reply.text[len(done):]
                yield chunk({"content": rest} if chat else rest)
            yield chunk({} if chat else "", _finish(reply))
            if include_usage:
                data = {"id": rid, "object": obj, "created": created, "model": model.id, "choices": [],
                        "usage": _usage(prompt_tokens, reply)}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # the client went away (or the stream ended): the thread stops at its next token

    return app


def _finish(reply: Reply) -> str:
    if reply.tool_calls:
        return "tool_calls"
    return "length" if reply.finish in ("length", "cancelled", "interrupted") else "stop"


def _usage(prompt_tokens: int, reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(reply.tokens),
            "total_tokens": prompt_tokens + len(reply.tokens)}


# ---------------------------------------------------------------------------------------------- running


def serve(pool: ModelPool, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log: Callable[[str], None] = print, access_log: bool = False) -> None:
    """Serve ``pool`` until Ctrl-C or SIGTERM: then no new connection is accepted, generations in flight stop at
    their next token (their replies end with ``finish_reason: "length"``), the models are freed, and this returns."""

    import uvicorn

    app = create_app(pool, api_key)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            pool.stopping.set()  # generations stop at their next token, so their connections close soon
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=access_log,
                            timeout_graceful_shutdown=10, lifespan="on")
    server = Server(config)
    # uvicorn re-raises the signal it caught once it has stopped: let that be a no-op, so the command exits 0
    previous = {s: signal.signal(s, lambda *a: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            ok = server.run()
        except SystemExit:  # uvicorn's answer to a port it cannot bind
            ok = False
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if ok is False or not server.started:
        raise ForgeError(f"could not listen on {host}:{port} (is the port in use? try --port)")
