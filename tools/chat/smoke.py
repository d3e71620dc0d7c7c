"""``quantize smoke``: greedy replies to a prompt suite, checked for what users otherwise find by hand.

Each reply must be non-empty, end with an end-of-generation token (not the token limit), carry no special-token
text or role header, and match its ``expect`` regex when one is given. Per file: type, size, prompt and
generation tokens/s and peak RSS.

Public surface: :func:`run_smoke`, :class:`SmokeReport`, :class:`SmokePrompt`, :func:`load_prompts`,
:func:`format_table`, :func:`find_leak`, :data:`CHECKS`.
"""

from __future__ import annotations

import re
import resource
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import gguf

from ... import keys
from ...errors import ForgeError
from ...files import format_size, is_gguf, parse_json_line, read_text_file
from ...files import progress as progress_bar
from ...runtime import special_texts
from .session import ChatSession, ChatStats
from .toolcalls import describe, tool_names

#: check name -> key in ``as_dict()``; the order of the table's columns
CHECKS = {"not empty": "not_empty", "stopped": "stopped", "no leak": "no_leak", "expect": "expect",
          "tool call": "tool_call"}

_ROLES = r"(?:system|user|assistant|model|human|gpt|bot|tool|ipython)"


@dataclass(frozen=True)
class SmokePrompt:
    """One prompt of a suite; ``expect`` is a regex the reply must contain (``re.search``)."""

    text: str
    expect: str | None = None
    system: str | None = None
    expect_tool: str | None = None  # the reply must be a readable call of this tool


@dataclass
class PromptResult:
    """The reply to one prompt and the outcome of each check that applies (check name -> passed)."""

    prompt: SmokePrompt
    expect: str | None
    reply: str
    tokens: int
    finish: str
    checks: dict[str, bool]
    details: dict[str, str] = field(default_factory=dict)  # failed check -> what was wrong
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-shaped, when tools were offered

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt.text, "expect": self.expect, "reply": self.reply, "tokens": self.tokens,
                "finish": self.finish, "checks": {CHECKS[k]: v for k, v in self.checks.items()},
                "failures": {CHECKS[k]: v for k, v in self.details.items()}, "tool_calls": self.tool_calls}


@dataclass
class SmokeReport:
    """Everything ``quantize smoke`` found out about one GGUF."""

    path: Path
    file_type: str
    size_bytes: int
    threads: int
    max_tokens: int
    results: list[PromptResult]
    stats: ChatStats  # prompt/generation tokens and seconds over the whole suite
    peak_rss_bytes: int
    min_gen_tps: float | None = None  # --min-speed: generation slower than this fails the file

    @property
    def fast_enough(self) -> bool:
        """False when ``min_gen_tps`` is set and generation was slower."""
        return self.min_gen_tps is None or self.gen_tps >= self.min_gen_tps

    @property
    def passed(self) -> bool:
        """True when every check passed on every prompt (and generation was fast enough)."""
        return self.fast_enough and all(all(r.checks.values()) for r in self.results)

    @property
    def prompt_tps(self) -> float:
        return self.stats.prompt_tps

    @property
    def gen_tps(self) -> float:
        return self.stats.gen_tps

    def counts(self) -> dict[str, tuple[int, int]]:
        """check name -> (prompts that passed it, prompts it applied to)."""
        out = {}
        for name in CHECKS:
            applied = [r.checks[name] for r in self.results if name in r.checks]
            out[name] = (sum(applied), len(applied))
        return out

    def failures(self) -> list[tuple[str, int, PromptResult]]:
        """(check name, 1-based prompt number, result) for every failed check."""
        return [(name, i, r) for i, r in enumerate(self.results, 1) for name, ok in r.checks.items() if not ok]

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable: file, type, size, per-check counts, per-prompt replies, speeds, peak RSS."""
        return {
            "file": str(self.path), "type": self.file_type, "size_bytes": self.size_bytes, "passed": self.passed,
            "checks": {CHECKS[k]: {"passed": p, "of": n} for k, (p, n) in self.counts().items()},
            "prompt_tokens": self.stats.prompt_tokens, "prompt_tokens_per_s": round(self.prompt_tps, 2),
            "gen_tokens": self.stats.gen_tokens, "gen_tokens_per_s": round(self.gen_tps, 2),
            "min_gen_tokens_per_s": self.min_gen_tps, "fast_enough": self.fast_enough,
            "peak_rss_bytes": self.peak_rss_bytes, "threads": self.threads, "max_tokens": self.max_tokens,
            "prompts": [r.as_dict() for r in self.results],
        }


def load_prompts(path: str | Path | None = None) -> list[SmokePrompt]:
    """A prompt suite: the default bilingual (English/Chinese) one, or a file.

    The file holds one prompt per line, or JSONL (``.jsonl``, or a first line starting with ``{``) with objects
    ``{"prompt": "...", "expect": "REGEX", "system": "..."}`` (``expect`` and ``system`` optional).
    """
    if path is None:
        text = (resources.files("gguf_forge.tools.chat") / "data" / "smoke_prompts.jsonl").read_text(encoding="utf-8")
        return _parse(text, "default suite", jsonl=True)
    path = Path(path)
    text = read_text_file(path, f"--prompts {path}")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    prompts = _parse(text, str(path), jsonl=path.suffix.lower() == ".jsonl" or first.startswith("{"))
    if not prompts:
        raise ForgeError(f"--prompts {path}: no prompts in it (one per line, or JSONL with a \"prompt\" field)")
    return prompts


def _parse(text: str, where: str, jsonl: bool) -> list[SmokePrompt]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            out.append(SmokePrompt(line.strip()))
            continue
        obj = parse_json_line(line, f"{where}:{n}", "write one JSON object per line")
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise ForgeError(f"{where}:{n}: expected {{\"prompt\": \"...\", \"expect\": \"REGEX\"}} "
                             "with a non-empty prompt")
        for key in ("expect", "system", "expect_tool"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise ForgeError(f"{where}:{n}: \"{key}\" must be a string")
        if obj.get("expect") is not None:
            _compile(obj["expect"], f"{where}:{n}: expect")
        out.append(SmokePrompt(obj["prompt"], obj.get("expect"), obj.get("system"), obj.get("expect_tool")))
    return out


def _compile(regex: str, what: str) -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as e:
        raise ForgeError(f"{what} {regex!r} is not a valid regular expression ({e})") from None


def find_leak(reply: str, specials: list[str]) -> str | None:
    """What in ``reply`` belongs to the chat format rather than the answer, or None.

    ``specials`` are the vocabulary's special-token texts (see ``chat.special_texts``), longest first. A role
    header is a special token followed by a role name (``<|im_start|>assistant``), or a role name alone on the
    first line (``assistant\\n`` from a template whose generation prompt omits it).
    """
    hits = [(reply.find(s), s) for s in specials if s in reply]
    if hits:
        pos, tok = min(hits, key=lambda h: (h[0], -len(h[1])))
        after = reply[pos + len(tok):]
        m = re.match(r"\s*" + _ROLES + r"\b", after, re.IGNORECASE)
        if m:
            return f"role header {tok + after[:m.end()]!r}"
        return f"special token {tok!r}"
    m = re.match(r"\s*" + _ROLES + r"[ \t]*\n|\s*(?:assistant|model)[ \t]*:", reply, re.IGNORECASE)
    if m:
        return f"role header {m.group(0).strip()!r} at the start"
    m = re.search(r"\n(" + _ROLES + r")\n", reply)
    if m:
        return f"role header {m.group(1)!r} on a line of its own"
    return None


def _file_type(llm) -> str:
    ftype = llm.metadata.get(keys.GENERAL.FILE_TYPE)
    try:
        return gguf.LlamaFileType(int(ftype)).name.replace("MOSTLY_", "").replace("ALL_", "")
    except (TypeError, ValueError):
        return "?"


class _PeakRSS:
    """Peak resident memory of this process since :meth:`reset` (Linux VmHWM, reset through clear_refs)."""

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # the peak then covers the whole process

    def read(self) -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


def run_smoke(paths: list[Path], prompts: list[SmokePrompt] | None = None, *, expect: str | None = None,
              max_tokens: int = 256, threads: int | None = None, template: str | None = None,
              system: str | None = None, progress: bool = True, ctx: int = 4096,
              min_gen_tps: float | None = None, tools: list[dict[str, Any]] | None = None,
              expect_tool: str | None = None) -> list[SmokeReport]:
    """Run ``prompts`` (default: the shipped bilingual suite) greedily against each GGUF and check every reply.

    ``expect`` applies to every prompt without an ``expect`` of its own; ``template`` is Jinja source replacing
    the GGUF's chat template; ``system`` is the system prompt for prompts without their own. A file that cannot
    be loaded raises :class:`ForgeError`. With ``min_gen_tps``, a file generating slower fails. ``tools`` (OpenAI
    function tools) are offered with every prompt; ``expect_tool`` (or a prompt's own) names the tool every reply
    must call, readably in the template's format.
    """
    prompts = load_prompts() if prompts is None else list(prompts)
    if not prompts:
        raise ForgeError("no prompts to run")
    wanted = {t for t in [expect_tool, *(sp.expect_tool for sp in prompts)] if t is not None}
    if wanted and not tools:
        raise ForgeError("--expect-tool needs --tools FILE.json (the tools the model may call)")
    unknown = sorted(wanted - set(tool_names(tools)))
    if unknown:
        raise ForgeError(f"--expect-tool {unknown[0]}: no such tool in --tools (tools: {', '.join(tool_names(tools))})")
    if expect is not None:
        _compile(expect, "--expect")
    paths = [Path(p) for p in paths]
    for p in paths:  # cheap checks first, so a typo in the last name does not wait for the others to run
        if not p.is_file():
            raise ForgeError(f"{p}: no such file")
        if not is_gguf(p):
            raise ForgeError(f"{p}: not a GGUF file (it does not start with the GGUF magic)")
    rss = _PeakRSS()
    reports = []
    for path in paths:
        rss.reset()
        session = ChatSession(path, ctx=ctx, threads=threads, temp=0.0, max_tokens=max_tokens, template=template,
                              tools=tools)
        try:
            specials = special_texts(session.llm)
            results = []
            bar = progress_bar(len(prompts), path.name, enabled=progress, unit="prompt")
            for sp in prompts:
                session.set_system(sp.system if sp.system is not None else system)
                session.reset()
                reply = session.say(sp.text)
                if session.last.finish == "interrupted":  # Ctrl-C stops the suite, not just this reply
                    raise KeyboardInterrupt
                results.append(_check(sp, sp.expect if sp.expect is not None else expect, reply,
                                      session.last, max_tokens, specials,
                                      sp.expect_tool if sp.expect_tool is not None else expect_tool))
                bar.update(1)
            bar.close()
            reports.append(SmokeReport(
                path=path, file_type=_file_type(session.llm), size_bytes=path.stat().st_size,
                threads=session.threads, max_tokens=max_tokens, results=results,
                stats=replace(session.stats),  # a copy: the session goes on counting
                peak_rss_bytes=rss.read(), min_gen_tps=min_gen_tps))
        finally:
            session.close()
    return reports


def _check(sp: SmokePrompt, expect: str | None, reply: str, last: Any, max_tokens: int,
           specials: list[str], expect_tool: str | None = None) -> PromptResult:
    checks: dict[str, bool] = {}
    details: dict[str, str] = {}
    calls = list(getattr(last, "tool_calls", None) or [])
    checks["not empty"] = bool(reply.strip()) or bool(calls)
    if not checks["not empty"]:
        details["not empty"] = "empty reply" if not reply else f"reply is only whitespace {reply!r}"
    checks["stopped"] = last.finish == "stop"
    if not checks["stopped"]:
        details["stopped"] = (f"did not stop: no end-of-turn token within {len(last.tokens)} tokens "
                              f"(--max-tokens {max_tokens})")
    # a tool call's markup (<tool_call>, [TOOL_CALLS]...) belongs to the format; what is left of the reply must not leak
    leak = find_leak(last.content if calls else reply, specials)
    checks["no leak"] = leak is None
    if leak:
        details["no leak"] = f"leaked {leak}"
    if expect is not None:
        checks["expect"] = re.search(expect, reply) is not None
        if not checks["expect"]:
            details["expect"] = f"reply does not match expect {expect!r}"
    if expect_tool is not None:
        names = [c["function"]["name"] for c in calls]
        checks["tool call"] = expect_tool in names
        if not checks["tool call"]:
            errors = getattr(last, "tool_errors", None) or []
            why = (f"it called {', '.join(names)}" if names else f"unreadable call: {errors[0]}" if errors
                   else "no tool call in it")
            details["tool call"] = f"reply is not a call of {expect_tool}: {why}"
    return PromptResult(prompt=sp, expect=expect, reply=reply, tokens=len(last.tokens), finish=last.finish,
                        checks=checks, details=details, tool_calls=calls)


def _excerpt(text: str, n: int = 60) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[:n - 1] + "…"


def format_table(reports: list[SmokeReport], markdown: bool = False) -> str:
    """One row per file (type, size, passed/applicable per check, speeds, peak RSS, PASS/FAIL), then one line
    per failure naming the check, the prompt and what the reply did."""
    head = ["file", "type", "size", *CHECKS, "prompt tok/s", "gen tok/s", "peak RSS", "result"]
    rows = []
    for r in reports:
        cells = []
        for name, (ok, n) in r.counts().items():
            cells.append("-" if n == 0 else f"{ok}/{n}" if ok == n else f"FAIL {ok}/{n}")
        gen = f"{r.gen_tps:.1f}" if r.fast_enough else f"FAIL {r.gen_tps:.1f}"
        rows.append([r.path.name, r.file_type, format_size(r.size_bytes), *cells, f"{r.prompt_tps:.1f}", gen,
                     format_size(r.peak_rss_bytes), "PASS" if r.passed else "FAIL"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    calls = [f"{r.path.name} #{i}: tool call> {describe(c)}" for r in reports
             for i, res in enumerate(r.results, 1) for c in res.tool_calls]
    if calls:
        lines += ["", *calls]
    fails = [(r, f) for r in reports for f in r.failures()]
    slow = [r for r in reports if not r.fast_enough]
    if fails or slow:
        lines.append("")
        for r in slow:
            lines.append(f"FAIL speed: {r.path.name}: generation {r.gen_tps:.1f} tok/s on {r.threads} threads, "
                         f"below --min-speed {r.min_gen_tps:g}")
        for r, (name, i, res) in fails:
            lines.append(f"FAIL {name}: {r.path.name}, prompt {i} {_excerpt(res.prompt.text, 40)!r}: "
                         f"{res.details[name]}; reply: {_excerpt(res.reply)!r}")
    return "\n".join(lines)
