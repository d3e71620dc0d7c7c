"""Chatting with a GGUF on the CPU through llama-cpp-python, with the GGUF's own chat template.

Public surface:

- :class:`ChatSession`: a multi-turn chat (streaming, history trimmed to the context window with the system
  prompt kept, every end-of-generation token a stop) with prompt/generation speed in :attr:`ChatSession.stats`.
- :func:`one_turn`: one greedy reply (``quantize demo``).

Loading, the end-of-generation tokens and the machine's core count come from :mod:`gguf_forge.runtime`; the
template is resolved and rendered by :mod:`gguf_forge.chat_template`, as everywhere else.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ... import chat_template
from ...errors import ForgeError
from ...files import format_size, gguf_field, open_gguf
from ...keys import ATTENTION, GENERAL, LLM, TOKENIZER, arch_key
from ...runtime import eog_tokens, load_model, token_text
from . import toolcalls

#: above this many tokens a context is checked against the model and the memory before llama.cpp allocates it
#: (reading the GGUF's metadata takes a moment; every model's own context below this is loaded without a look)
LARGE_CTX = 131072


def one_turn(path: str | Path, prompt: str, system: str | None = None, max_tokens: int = 128) -> str:
    """Greedy single-turn reply from the GGUF at ``path`` (the same code path as ``quantize chat``)."""
    with ChatSession(path, system=system, max_tokens=max_tokens) as session:
        return session.say(prompt)


class ContextOverflow(ForgeError):
    """A conversation longer than the context window (with no older turn to drop): its size and the window's."""

    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(f"the message is too long: the prompt is {prompt_tokens} tokens and the context window "
                         f"is {n_ctx}; use a larger --ctx or a shorter message")
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


@dataclass
class ChatStats:
    """Token counts and seconds, summed over the turns of a session (or of one reply)."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    gen_tokens: int = 0
    gen_seconds: float = 0.0

    @property
    def prompt_tps(self) -> float:
        """Prompt tokens evaluated per second (tokens reused from the cache are not counted)."""
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        """Generated tokens per second."""
        return self.gen_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0

    def add(self, other: "ChatStats") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.prompt_seconds += other.prompt_seconds
        self.gen_tokens += other.gen_tokens
        self.gen_seconds += other.gen_seconds

    def line(self) -> str:
        """``prompt: 123 tokens, 456.7 tok/s; generation: 89 tokens, 12.3 tok/s``"""
        return (f"prompt: {self.prompt_tokens} tokens, {self.prompt_tps:.1f} tok/s; "
                f"generation: {self.gen_tokens} tokens, {self.gen_tps:.1f} tok/s")


@dataclass
class Reply:
    """One assistant reply: its text (special tokens rendered), how it ended, and its own figures."""

    text: str
    tokens: list[int]
    # "stop" (an end-of-generation token or a stop string), "length" (--max-tokens or the context end),
    # "interrupted" (Ctrl-C), "cancelled" (the caller's cancel() said so: a client went away)
    finish: str
    stats: ChatStats
    dropped_turns: int = 0  # oldest user/assistant pairs dropped to fit the context window
    prompt: str = ""  # the rendered prompt the reply continues
    prompt_ids: list[int] = field(default_factory=list)  # its tokens
    content: str | None = None  # the text without its tool calls (None: the same as text)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-shaped calls found in the text
    tool_errors: list[str] = field(default_factory=list)  # calls begun but unreadable

    def __post_init__(self) -> None:
        if self.content is None:
            self.content = self.text


class ChatSession:
    """A multi-turn chat with a GGUF on the CPU.

    The prompt is the whole conversation rendered by the chat template (the GGUF's own, or ``template``: Jinja
    source, a named template such as ``chatml`` or a ``.jinja`` file) through :func:`gguf_forge.chat_template.render`;
    the KV cache keeps the part of it that did not change, so each turn evaluates only
    the new tokens. Generation stops on any end-of-generation token
    (``llama_vocab_is_eog``) or after ``max_tokens``. When the conversation no longer fits in ``ctx`` tokens
    (leaving room for a reply), the oldest turns are dropped; the system prompt is kept.

    Example::

        with ChatSession("SmolLM2-135M-Instruct-Q8_0.gguf") as chat:
            chat.say("My name is Anna.")
            print(chat.say("What is my name?", on_token=lambda s: print(s, end="")))
            print(chat.stats.line())
    """

    def __init__(self, path: str | Path, *, system: str | None = None, ctx: int = 4096, threads: int | None = None,
                 temp: float = 0.0, top_p: float = 1.0, seed: int = 0, max_tokens: int = 512,
                 template: str | None = None, tools: list[dict[str, Any]] | None = None) -> None:
        from llama_cpp import llama_cpp as C

        if ctx < 16:
            raise ForgeError(f"{ctx} tokens: too small a context for a chat; use at least 512", option="ctx")
        if max_tokens < 1:
            raise ForgeError(f"{max_tokens}: must be at least 1", option="max_tokens")
        self.path = Path(path)
        if ctx > LARGE_CTX:
            check_context(self.path, ctx)
        try:
            self.llm = load_model(self.path, n_ctx=ctx, threads=threads)
        except ForgeError:
            check_context(self.path, ctx)  # the context, rather than the file, when it is too large for either
            raise
        self.threads = self.llm.n_threads
        self.n_ctx = self.llm.n_ctx()
        self.max_tokens = max_tokens
        self.system = system
        self.tools = tools or None
        self.history: list[dict[str, Any]] = []
        self.stats = ChatStats()
        self.last: Reply | None = None
        try:
            self.template = chat_template.resolve(template, self.llm.metadata.get(TOKENIZER.CHAT_TEMPLATE))
            if not self.template:
                raise ForgeError(f"{self.path}: the GGUF has no tokenizer.chat_template; give one with --template")
            self._bos_text = token_text(self.llm, self.llm.token_bos())
            self._eos_text = token_text(self.llm, self.llm.token_eos())
            # a template that does not parse, fails or goes over a render limit on a first message fails now
            chat_template.render(self.template, [*self.messages(), {"role": "user", "content": "Hello."}],
                                 bos_token=self._bos_text, eos_token=self._eos_text)
            #: the format tool calls take in this template's replies (None: it has no known one)
            self.tool_format = (toolcalls.check_template_sees_tools(self.template, self.tools,
                                                                    bos_token=self._bos_text, eos_token=self._eos_text)
                                if self.tools else toolcalls.detect_format(self.template))
        except BaseException:
            self.llm.close()
            raise
        self._eog = eog_tokens(self.llm)
        self._vocab = C.llama_model_get_vocab(self.llm.model)
        self._bos = self.llm.token_bos()
        self._add_bos = bool(C.llama_vocab_get_add_bos(self._vocab))
        self._n_batch = self.llm.n_batch
        self._past: list[int] = []  # tokens whose keys/values are in the cache, in order
        self._greedy = temp <= 0
        self._sampler = self._make_sampler(temp, top_p, seed)

    # -- public ---------------------------------------------------------------------------------------------

    def say(self, text: str, on_token: Callable[[str], None] | None = None) -> str:
        """Send one user message and return the reply; ``on_token`` receives each piece of text as it comes."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # bytes that were not UTF-8, read with surrogateescape
            raise ForgeError(f"the message is not UTF-8 text (character {e.start}); send UTF-8") from None
        self.history.append({"role": "user", "content": text})
        try:
            tokens, prompt, dropped, limit = self._fit_prompt()
        except ForgeError:
            self.history.pop()
            raise
        try:
            reply = self._generate(tokens, limit, on_token, self._sampler,
                                   hold=toolcalls.start_markers(self.tool_format) if self.tools else ())
        except BaseException:  # an interrupt while reading the prompt, a decode error: the turn did not happen
            self.history.pop()
            raise
        reply.dropped_turns = dropped
        reply.prompt, reply.prompt_ids = prompt, tokens
        if self.tools:
            self._split_tool_calls(reply)
        if reply.tool_calls:
            self.history.append({"role": "assistant", "content": reply.content, "tool_calls": reply.tool_calls})
        else:
            self.history.append({"role": "assistant", "content": reply.text})
        self.stats.add(reply.stats)
        self.last = reply
        return reply.text

    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 max_tokens: int | None = None, temp: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 stop: list[str] | tuple[str, ...] = (), on_token: Callable[[str], None] | None = None,
                 cancel: Callable[[], bool] | None = None, generation_prompt: bool = True,
                 raw_prompt: str | None = None, on_start: Callable[[int], None] | None = None) -> Reply:
        """One reply to a whole conversation (OpenAI-style ``messages``, the session's system prompt first when
        they have none), the history untouched: ``quantize serve``'s requests. The same rendering, cache reuse,
        end-of-generation tokens and sampling as :meth:`say`; ``stop`` strings end the reply (they are not part
        of it); ``cancel()`` is asked before every token; ``tools`` are rendered and calls in the reply returned
        as ``tool_calls``. ``raw_prompt`` is text to continue as it is (``/v1/completions``). A conversation
        longer than the context is a :class:`ContextOverflow` (nothing is dropped); ``on_start(prompt_tokens)`` is
        called once the prompt is known to fit, before it is evaluated."""
        # a template that never shows tools, or whose calls cannot be read: refused, not silently ignored
        fmt = toolcalls.check_template_sees_tools(self.template, tools, bos_token=self._bos_text,
                                                  eos_token=self._eos_text) if tools else None
        if raw_prompt is not None:
            prompt = raw_prompt
            tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
            if self._add_bos and self._bos >= 0 and (not tokens or tokens[0] != self._bos):
                tokens.insert(0, self._bos)
        else:
            if self.system and not any(m.get("role") in ("system", "developer") for m in messages[:1]):
                messages = [{"role": "system", "content": self.system}, *messages]
            prompt, tokens = self._render(toolcalls.template_messages(messages), tools=tools,
                                          generation_prompt=generation_prompt)
        if not tokens:
            raise ForgeError("the prompt is empty")
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise ContextOverflow(len(tokens), self.n_ctx)
        limit = min(max_tokens or self.max_tokens, room)
        if on_start is not None:
            on_start(len(tokens))
        sampler = self._sampler if (temp <= 0 and self._greedy) else self._make_sampler(temp, top_p, seed)
        try:
            reply = self._generate(tokens, limit, on_token, sampler, stop=stop,
                                   hold=toolcalls.start_markers(fmt) if tools else (), cancel=cancel,
                                   bare_json=fmt == "llama3")
        finally:
            if sampler is not self._sampler:
                from llama_cpp import llama_cpp as C

                C.llama_sampler_free(sampler)
        reply.prompt, reply.prompt_ids = prompt, tokens
        if tools:
            self._split_tool_calls(reply, fmt)
        return reply

    def reset(self, clear_cache: bool = False) -> None:
        """Forget the conversation (the system prompt stays); the cache keeps what the next prompt shares,
        unless ``clear_cache`` (then the next prompt is evaluated from its first token)."""
        self.history.clear()
        if clear_cache:
            self._clear_cache()

    def set_system(self, text: str | None) -> None:
        """Replace the system prompt (None: the template's default, if it has one)."""
        self.system = text or None

    def messages(self) -> list[dict[str, str]]:
        """The conversation as OpenAI-style messages, system prompt first."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + list(self.history)

    def close(self) -> None:
        """Free the model, its context and the sampler."""
        from llama_cpp import llama_cpp as C

        if getattr(self, "_sampler", None) is not None:
            C.llama_sampler_free(self._sampler)
            self._sampler = None
        self.llm.close()

    def __enter__(self) -> "ChatSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _make_sampler(self, temp: float, top_p: float, seed: int):
        from llama_cpp import llama_cpp as C

        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if temp <= 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        else:
            if top_p < 1.0:
                C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(top_p, 1))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(temp))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _split_tool_calls(self, reply: Reply, fmt: str | None = None) -> None:
        parsed = toolcalls.parse(reply.text, fmt or self.tool_format)
        reply.content, reply.tool_calls, reply.tool_errors = parsed.content, parsed.tool_calls, parsed.errors

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                generation_prompt: bool = True) -> tuple[str, list[int]]:
        tools = tools if tools is not None else self.tools
        extra = {"tools": tools} if tools else {}
        prompt = chat_template.render(self.template, messages, add_generation_prompt=generation_prompt,
                                      bos_token=self._bos_text, eos_token=self._eos_text, **extra)
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        # llama.cpp adds BOS when the vocabulary asks for it; the template may already have written it
        if self._add_bos and self._bos >= 0 and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return prompt, tokens

    def _fit_prompt(self) -> tuple[list[int], str, int, int]:
        """Render the conversation, dropping the oldest turns until it leaves room for a reply.

        The history is only shortened when the new message then fits; otherwise it is left as it was.
        """
        reserve = min(self.max_tokens, self.n_ctx // 2)
        system = self.messages()[:1] if self.system else []
        history = list(self.history)
        dropped = 0
        while True:
            prompt, tokens = self._render(toolcalls.template_messages(system + history))
            if len(tokens) + reserve <= self.n_ctx or len(history) <= 1:
                break
            # drop the oldest user message and everything up to the next user message
            history.pop(0)
            while history and history[0]["role"] != "user":
                history.pop(0)
            dropped += 1
        if len(tokens) < 1:
            raise ForgeError("the chat template rendered an empty prompt; check --template")
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise ContextOverflow(len(tokens), self.n_ctx)
        self.history[:] = history
        return tokens, prompt, dropped, min(self.max_tokens, room)

    def _clear_cache(self) -> None:
        from llama_cpp import llama_cpp as C

        C.llama_memory_clear(C.llama_get_memory(self.llm.ctx), True)
        self._past = []

    def _decode(self, tokens: list[int]) -> None:
        from llama_cpp import llama_cpp as C

        for start in range(0, len(tokens), self._n_batch):
            chunk = tokens[start:start + self._n_batch]
            arr = (C.llama_token * len(chunk))(*chunk)
            rc = C.llama_decode(self.llm.ctx, C.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                self._clear_cache()
                raise ForgeError(f"llama.cpp could not evaluate the prompt (llama_decode returned {rc}); "
                                 "try a smaller --ctx")

    def _eval_prompt(self, tokens: list[int]) -> int:
        """Bring the cache to ``tokens``, reusing the common prefix; returns how many tokens were evaluated."""
        from llama_cpp import llama_cpp as C

        keep = 0
        for a, b in zip(self._past, tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # evaluate at least one token to get fresh logits
        self._past = list(tokens[:keep])
        # always: an interrupted evaluation may have left positions beyond what _past records
        if not C.llama_memory_seq_rm(C.llama_get_memory(self.llm.ctx), -1, keep, -1):
            keep = 0  # e.g. a sliding-window cache that cannot drop a suffix: start over
            self._clear_cache()
        self._decode(tokens[keep:])
        self._past = list(tokens)
        return len(tokens) - keep

    def _generate(self, tokens: list[int], limit: int, on_token: Callable[[str], None] | None, sampler: Any,
                  stop: list[str] | tuple[str, ...] = (), hold: list[str] | tuple[str, ...] = (),
                  cancel: Callable[[], bool] | None = None, bare_json: bool = False) -> Reply:
        """Generate up to ``limit`` tokens after ``tokens``. ``on_token`` gets the text as it comes, except a
        suffix that may still become a ``stop`` string (held until it is known not to be one) and everything from
        a ``hold`` marker on (a tool call: read whole at the end); with ``bare_json`` a reply that starts with
        ``{`` is held whole (Llama 3's tool call without its tag)."""
        from llama_cpp import llama_cpp as C

        stats = ChatStats()
        t0 = time.perf_counter()
        stats.prompt_tokens = self._eval_prompt(tokens)
        t1 = time.perf_counter()
        stats.prompt_seconds = t1 - t0

        ctx, vocab, eog = self.llm.ctx, self._vocab, self._eog
        buf = ctypes.create_string_buffer(256)
        one = (C.llama_token * 1)()
        batch = C.llama_batch_get_one(one, 1)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out: list[int] = []
        pieces: list[str] = []
        finish = "length"
        text, sent, held = "", 0, False  # sent: characters given to on_token; held: a tool call began
        filtering = bool(stop or hold or bare_json)
        try:
            for _ in range(limit):
                if cancel is not None and cancel():
                    finish = "cancelled"
                    break
                tok = C.llama_sampler_sample(sampler, ctx, -1)
                if tok in eog:
                    finish = "stop"
                    break
                out.append(tok)
                n = C.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
                if n < 0:  # a piece longer than the buffer
                    buf = ctypes.create_string_buffer(-n)
                    n = C.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
                piece = utf8.decode(buf.raw[:n])
                if piece and not filtering:
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                elif piece:
                    text += piece
                    hit = min((i for i in (text.find(x) for x in stop) if i >= 0), default=-1)
                    if hit >= 0:
                        text = text[:hit]
                    if not held:
                        safe = len(text) if hit >= 0 else toolcalls.holdback(text, list(stop))
                        mark = toolcalls.holdback(text, list(hold))
                        if any(m in text for m in hold) or (bare_json and text.lstrip().startswith("{")):
                            held = True
                            mark = 0 if bare_json and text.lstrip().startswith("{") else mark
                        safe = max(sent, min(safe, mark))
                        if safe > sent and on_token is not None:
                            on_token(text[sent:safe])
                        sent = safe
                    if hit >= 0:
                        finish = "stop"  # a stop string: its token is not evaluated, the cache stays with _past
                        break
                one[0] = tok
                rc = C.llama_decode(ctx, batch)
                if rc != 0:
                    raise ForgeError(f"llama.cpp could not evaluate a generated token (llama_decode returned {rc})")
                self._past.append(tok)
        except KeyboardInterrupt:
            finish = "interrupted"
            self._clear_cache()  # the cache may hold a token the history does not: start afresh next turn
        except ForgeError:
            self._clear_cache()
            raise
        # bytes of a character cut off by the token limit stay undecoded: no U+FFFD at the end of the text
        if filtering:
            if not held and on_token is not None and len(text) > sent:
                # the end of the reply: text held back as a possible stop string's start is text after all
                on_token(text[sent:])
            pieces = [text]
        stats.gen_tokens = len(out)
        stats.gen_seconds = time.perf_counter() - t1
        return Reply(text="".join(pieces), tokens=out, finish=finish, stats=stats)


def check_context(path: Path, ctx: int) -> None:
    """Refuse a context window of ``ctx`` tokens that is longer than the model was trained on and whose cache
    (f16 keys and values, as llama.cpp allocates it) needs more memory than this machine has available: say so,
    rather than let llama.cpp fail to allocate it (or the machine swap). Unreadable metadata: nothing said here."""
    try:
        reader = open_gguf(path)
        arch = gguf_field(reader, GENERAL.ARCHITECTURE)
        trained = int(gguf_field(reader, arch_key(LLM.CONTEXT_LENGTH, arch)))
        layers = int(gguf_field(reader, arch_key(LLM.BLOCK_COUNT, arch)))
        heads = int(gguf_field(reader, arch_key(ATTENTION.HEAD_COUNT, arch)))
        kv_heads = gguf_field(reader, arch_key(ATTENTION.HEAD_COUNT_KV, arch))
        head_dim = int(gguf_field(reader, arch_key(LLM.EMBEDDING_LENGTH, arch))) // heads
        key_len = int(gguf_field(reader, arch_key(ATTENTION.KEY_LENGTH, arch)) or head_dim)
        value_len = int(gguf_field(reader, arch_key(ATTENTION.VALUE_LENGTH, arch)) or head_dim)
        per_layer = [int(h) for h in kv_heads] if isinstance(kv_heads, list) else [int(kv_heads or heads)] * layers
    except (ForgeError, TypeError, ValueError, ZeroDivisionError, OSError):
        return
    need = ctx * sum(per_layer) * (key_len + value_len) * 2
    available = _available_memory()
    if ctx > trained and available is not None and need > available:
        raise ForgeError(f"{ctx} tokens: too large a context for this model on this machine: the model was trained "
                         f"on {trained} tokens, and a {ctx}-token context needs about {format_size(need)} of memory "
                         f"for its cache, more than the {format_size(available)} available; use a smaller context, "
                         f"e.g. {trained} (the model's own)", option="ctx")


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, else the free pages), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
