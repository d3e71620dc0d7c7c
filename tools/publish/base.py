"""What every model hub provides to :func:`~gguf_forge.tools.publish.publish`: the :class:`Hub` interface.

A hub is a subclass of :class:`Hub` in its own module (:mod:`.huggingface`, :mod:`.modelscope`) with one entry in
:data:`.hubs.HUBS`. It names itself (``--hub`` name, title, help line), states its per-file limit and where its
token comes from, and implements what differs between hubs: finding the token, creating the repo, telling which
files the hub already holds, and uploading. The rest (checking, splitting, the plan) is shared.

Public surface: :class:`Hub`, :class:`PlannedFile`, :func:`scrub`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

from ...errors import ForgeError


@dataclass
class PlannedFile:
    """One file of the upload: where it comes from, where it goes and what happened to it.

    ``source`` is relative to the output folder and ends with ``path_in_repo``. ``status`` is ``"upload"``
    (planned, for a dry run), ``"uploaded"``, or ``"on hub"`` (skipped: the hub already holds the same content).
    ``sha256`` is ``None`` only for shards of a dry run (they are not written then).
    """

    source: str
    path_in_repo: str
    bytes: int
    sha256: str | None
    kind: str
    split_from: str | None = None
    status: str = "upload"

    def upload_root(self, outdir: Path) -> Path:
        """The folder that holds this file at ``path_in_repo`` (OUTDIR, or the shards' staging folder)."""
        assert self.source.endswith(self.path_in_repo), (self.source, self.path_in_repo)
        return outdir / self.source[: len(self.source) - len(self.path_in_repo)]


def scrub(text: str, token: str) -> str:
    """The message with the token (and any bearer credential) replaced by ***."""
    text = text.replace(token, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


class Hub:
    """A model hub: subclass it in a module of its own and add the class to :data:`.hubs.HUBS`.

    An instance holds the token (passed to the hub's client library only, scrubbed from every message).
    """

    #: ``--hub`` name
    name: ClassVar[str]
    #: the hub's name in messages ("Hugging Face")
    title: ClassVar[str]
    #: one line for ``--hub``'s help: the hub and the client library it uses
    description: ClassVar[str]
    #: per-file size limit in bytes (decimal units, as the hubs and llama.cpp's gguf-split use them)
    limit: ClassVar[int] = 50 * 1000**3
    #: the environment variable the client library reads the token from
    token_env: ClassVar[str]
    #: the client's login command, which caches a token
    login_command: ClassVar[str]
    #: what kind of token to log in with (follows the login command in messages)
    token_note: ClassVar[str] = ""

    def __init__(self, token: str) -> None:
        self.token = token

    # -- what each hub implements ---------------------------------------------------------------------------

    @classmethod
    def find_token(cls) -> str | None:
        """The token as the client library finds it (:attr:`token_env`, then its login cache), or None."""
        raise NotImplementedError

    def create_repo(self, repo: str, private: bool) -> str:
        """Create model repo ``repo`` if it does not exist (an existing one keeps its visibility); its URL."""
        raise NotImplementedError

    def check_existing(self, repo: str, files: list[PlannedFile], outdir: Path) -> None:
        """Set ``status`` to ``"on hub"`` for each file the hub already holds with the same content.

        The default leaves every file to :meth:`upload` (for clients that skip known content themselves)."""

    def upload(self, repo: str, files: list[PlannedFile], outdir: Path, message: str, progress: bool) -> str | None:
        """Upload ``files`` (read from ``outdir / f.source``) to ``repo`` as ``f.path_in_repo``; the commit id,
        where the hub gives one. An interrupted upload must resume when called again."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------

    @classmethod
    def connect(cls) -> Hub:
        """The hub with the user's token; a :class:`ForgeError` saying how to provide one when there is none."""
        token = cls.find_token()
        if not token:
            note = f" {cls.token_note}" if cls.token_note else ""
            raise ForgeError(f"no {cls.title} token found: set {cls.token_env} or run `{cls.login_command}`{note}")
        return cls(token)

    @contextlib.contextmanager
    def errors(self, repo: str, what: str) -> Iterator[None]:
        """Turn the client library's errors into one-line ForgeErrors that never contain the token."""
        try:
            yield
        except ForgeError:
            raise
        except Exception as e:  # the hub libraries raise HTTP, network and value errors of many kinds
            status = getattr(getattr(e, "response", None), "status_code", None) or getattr(e, "status_code", None)
            if status in (401, 403):
                raise ForgeError(f"{what} {repo}: the hub refused the token (HTTP {status}); use a token with write "
                                 f"access ({self.token_env} or `{self.login_command}`)") from None
            detail = " <- ".join(" ".join(scrub(x, self.token).split())[:200] for x in _error_chain(e))
            raise ForgeError(f"{what} {repo} failed ({detail}); re-run the same command to resume, files already "
                             "on the hub are skipped") from None


def _error_chain(e: BaseException) -> list[str]:
    """The error and its causes, up to the first HTTP error (shown as its status and the hub's own message)."""
    chain: list[str] = []
    c: BaseException | None = e
    while c is not None and len(chain) < 4:
        response = getattr(c, "response", None)
        if response is not None:
            said = getattr(c, "server_message", None) or (str(c).splitlines() or [""])[0]
            chain.append(f"HTTP {response.status_code}: {said}")
            break
        chain.append(f"{type(c).__name__}: {c}")
        c = c.__cause__ or c.__context__
    return chain
