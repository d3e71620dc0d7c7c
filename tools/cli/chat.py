"""``quantize chat`` and ``quantize smoke``: talk to a GGUF on the CPU, and check its replies automatically."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ...errors import ForgeError
from ..chat import ChatSession, format_table, load_prompts, run_smoke
from ..chat.toolcalls import describe, load_tools
from . import options as opt


def tools_option(help: str) -> opt.Decorator:
    """``--tools FILE.json``: OpenAI function tools the chat template shows the model."""
    return click.option("--tools", "tools_file", type=click.Path(dir_okay=False, path_type=Path),
                        metavar="FILE.json", help=help)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@opt.system()
@opt.ctx("Context window in tokens; the oldest turns are dropped when the chat outgrows it.", default=4096, min=16)
@opt.threads("CPU threads (default: the number of physical cores).")
@click.option("--temp", type=opt.FiniteFloatRange(min=0), default=0.0, show_default=True,
              help="Sampling temperature; 0 is greedy (the same reply every time).")
@click.option("--top-p", type=opt.FiniteFloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
              help="Nucleus sampling (with --temp > 0).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (with --temp > 0).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Longest reply in tokens.")
@opt.template("Chat template instead of the GGUF's own")
@tools_option("Tools the model may call: a JSON list of OpenAI function tools ([{\"type\": \"function\", "
              "\"function\": {\"name\", \"description\", \"parameters\"}}]), rendered by the chat template; "
              "calls in replies are shown as 'tool call> NAME(ARGS)'.")
def chat(model: Path, system: str | None, ctx: int, threads: int | None, temp: float, top_p: float, seed: int,
         max_tokens: int, template: str | None, tools_file: Path | None) -> None:
    """Chat with a GGUF on the CPU (llama.cpp through llama-cpp-python), streaming the reply.

    Uses the chat template stored in the GGUF and stops on every end-of-turn token. Commands: /reset (forget
    the conversation), /system TEXT (new system prompt), /exit. Reads lines from stdin when it is not a
    terminal, so a chat can be scripted; notices and the closing speed line go to stderr. Interactively, an
    error ends only its turn; in a script, a turn that fails (a message longer than the context, a template
    error) ends the chat with its one-line error and exit status 2, so a script never passes with a turn missing.

    \b
    Examples:
      quantize chat My-Chinese-Chat-Q4_K_M.gguf
      quantize chat model.gguf --system "Answer in Chinese." --temp 0.7 --ctx 8192
      printf 'My name is Anna.\\nWhat is my name?\\n' | quantize chat model.gguf
      quantize chat my-agent-Q4_K_M.gguf --tools weather-tools.json
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # chat writes no file: a kill just ends it
    tools = load_tools(tools_file) if tools_file is not None else None
    session = ChatSession(model, system=system, ctx=ctx, threads=threads, temp=temp, top_p=top_p, seed=seed,
                          max_tokens=max_tokens, template=opt.template_source(template), tools=tools)
    interactive = sys.stdin.isatty()
    if interactive:
        opt.note(f"chatting with {model.name} on {session.threads} CPU threads, context {session.n_ctx} tokens; "
                 "/reset, /system TEXT, /exit")
    try:
        while (text := _next_line(interactive)) is not None:
            if not text:
                continue
            if text.startswith("/"):
                if not _slash_command(session, text):
                    break
                continue
            if not interactive:
                click.echo(f"user> {text}")
            _reply(session, text, max_tokens, interactive)
        opt.note(session.stats.line())
    finally:
        session.close()


def _next_line(interactive: bool) -> str | None:
    """The user's next line, stripped; None at the end of input (Ctrl-D, Ctrl-C at the prompt, end of a script)."""
    try:
        line = input("user> ") if interactive else sys.stdin.readline()
    except (EOFError, KeyboardInterrupt):
        return None
    if not interactive and not line:
        return None
    return line.strip()


def _slash_command(session: ChatSession, text: str) -> bool:
    """Run /reset, /system TEXT; False for /exit."""
    cmd, _, arg = text.partition(" ")
    if cmd in ("/exit", "/quit", "/bye"):
        return False
    if cmd == "/reset":
        session.reset()
        opt.note("(conversation cleared)")
    elif cmd == "/system":
        session.set_system(arg.strip() or None)
        opt.note("(system prompt set)" if arg.strip() else "(system prompt: the template's default)")
    else:
        opt.note(f"unknown command {cmd}; commands: /reset, /system TEXT, /exit")
    return True


def _show(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _reply(session: ChatSession, text: str, max_tokens: int, interactive: bool = True) -> None:
    """Stream the reply to ``text``; an error or Ctrl-C ends the turn, not the chat (a script's error ends the
    chat: it is raised)."""
    click.echo("assistant> ", nl=False)
    shown: list[str] = []

    def show(piece: str) -> None:
        shown.append(piece)
        _show(piece)

    try:
        session.say(text, on_token=show)
    except ForgeError as e:
        click.echo()
        if not interactive:
            raise
        opt.note(f"error: {e}")
        return
    except KeyboardInterrupt:
        click.echo()
        opt.note("[interrupted]")
        return
    last = session.last
    if session.tools:
        if last.tool_calls:
            for i, call in enumerate(last.tool_calls):
                click.echo(("\n" if i or "".join(shown).strip() else "") + f"tool call> {describe(call)}", nl=False)
        else:  # text held back as the possible start of a call, that was none
            _show(last.text[len("".join(shown)):])
        for error in last.tool_errors:
            opt.note(f"\n[unreadable tool call: {error}]")
    click.echo()
    if last.finish == "length":
        opt.note(f"[reply cut at {len(last.tokens)} tokens: --max-tokens {max_tokens} or the context end]")
    elif last.finish == "interrupted":
        opt.note("[interrupted]")
    if last.dropped_turns:
        opt.note(f"[{last.dropped_turns} oldest turn(s) dropped to fit the {session.n_ctx}-token context]")


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Prompt suite: one prompt per line, or JSONL {\"prompt\", \"expect\", \"system\"} "
                   "(default: a bilingual English/Chinese suite shipped with gguf-forge).")
@click.option("--expect", metavar="REGEX", help="Every reply (of prompts without their own expect) must match.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="A reply must end with an end-of-turn token within this many tokens.")
@opt.threads("CPU threads (default: the number of physical cores).")
@opt.ctx("Context window in tokens.", default=4096, min=16)
@opt.system("System prompt for prompts without their own (default: the template's).")
@opt.template("Chat template instead of the GGUF's own")
@click.option("--min-speed", type=opt.FiniteFloatRange(min=0), metavar="TOK/S",
              help="Fail a file whose generation is slower than this many tokens/s (is it usable on this machine?).")
@click.option("--replies", "show_replies", is_flag=True, help="Also print every reply.")
@tools_option("Tools offered with every prompt (a JSON list of OpenAI function tools), rendered by the chat "
              "template; the calls in each reply are shown and checked.")
@click.option("--expect-tool", metavar="NAME", help="Every reply (of prompts without their own expect_tool) must be a "
                                                    "readable call of the tool NAME (needs --tools).")
@opt.markdown()
@opt.as_json("Print the results (replies included) as JSON.")
@opt.no_progress()
def smoke(models: tuple[Path, ...], prompts_file: Path | None, expect: str | None, max_tokens: int,
          threads: int | None, ctx: int, system: str | None, template: str | None, min_speed: float | None,
          show_replies: bool, tools_file: Path | None, expect_tool: str | None,
          markdown: bool, as_json: bool, no_progress: bool) -> None:
    """Smoke-test GGUF files: greedy replies to a prompt suite on the CPU, each reply checked.

    \b
    Checks per reply:
      not empty   the reply has visible text
      stopped     it ended with an end-of-turn token, not at --max-tokens
      no leak     no special-token text (<|im_start|>, <|eot_id|>...) or role header (assistant\\n) in it
      expect      it matches the prompt's expect regex, or --expect
      tool call   with --expect-tool NAME (or a prompt's expect_tool): the reply is a readable call of NAME
                  in the template's tool-call format
    and, with --min-speed, generation tokens/s per file.
    Prints a table per file (type, size, checks, prompt and generation tokens/s, peak RSS); exit code 1
    when any check fails, 2 when a file cannot be loaded.

    \b
    Examples:
      quantize smoke My-Chinese-Chat-Q4_K_M.gguf My-Chinese-Chat-Q8_0.gguf
      quantize smoke model.gguf --prompts identity.jsonl --markdown
      quantize smoke model.gguf --prompts questions.txt --expect '(?i)anna' --json
      quantize smoke My-Chat-Q8_0.gguf --min-speed 10      # fail when slower than 10 tokens/s here
      quantize smoke agent-Q8_0.gguf --prompts weather.txt --tools tools.json --expect-tool get_weather
    """
    prompts = load_prompts(prompts_file)
    tools = load_tools(tools_file) if tools_file is not None else None
    reports = run_smoke(list(models), prompts, expect=expect, max_tokens=max_tokens, threads=threads,
                        template=opt.template_source(template), system=system, progress=not no_progress, ctx=ctx,
                        min_gen_tps=min_speed, tools=tools, expect_tool=expect_tool)
    if as_json:
        opt.echo_json([r.as_dict() for r in reports])
    else:
        click.echo(format_table(reports, markdown=markdown))
        if show_replies:
            for r in reports:
                for i, res in enumerate(r.results, 1):
                    click.echo(f"\n[{r.path.name} #{i} {res.finish}, {res.tokens} tokens] {res.prompt.text}\n"
                               f"{res.reply}")
                    for call in res.tool_calls:
                        click.echo(f"tool call> {describe(call)}")
    if not all(r.passed for r in reports):
        sys.exit(1)  # a check failed (a user error would be exit 2)
