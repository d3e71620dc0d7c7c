"""ModelScope through its own client library, modelscope-hub (optional extra ``gguf-forge[modelscope]``).

The client hashes, skips what the hub already holds and resumes by itself. Endpoint: ``MODELSCOPE_ENDPOINT``
(default https://www.modelscope.cn).

Public surface: :class:`ModelScope`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from ...errors import ForgeError
from .base import Hub, PlannedFile, scrub


class ModelScope(Hub):
    name = "modelscope"
    title = "ModelScope"
    description = "ModelScope (optional extra: gguf-forge[modelscope])"
    token_env = "MODELSCOPE_API_TOKEN"
    login_command = "modelscope login"
    token_note = "(an SDK token from modelscope.cn)"

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.api = _client()(token=token)

    @classmethod
    def find_token(cls) -> str | None:
        _client()  # a clear error when the client is not installed
        from modelscope_hub.config import get_default_config

        return get_default_config().token or None  # MODELSCOPE_API_TOKEN or `modelscope login`'s cache

    def create_repo(self, repo: str, private: bool) -> str:
        with self.errors(repo, "creating repo"):
            if not self.api.repo_exists(repo, "model"):
                self.api.create_repo(repo, "model", visibility="private" if private else "public")
        return f"{os.environ.get('MODELSCOPE_ENDPOINT', 'https://www.modelscope.cn').rstrip('/')}/models/{repo}"

    def upload(self, repo: str, files: list[PlannedFile], outdir: Path, message: str, progress: bool) -> str | None:
        """One ``upload_folder`` per source folder: OUTDIR itself (unsplit files, manifest) and the shards'
        staging folder."""
        by_root: dict[Path, list[PlannedFile]] = {}
        for f in files:
            by_root.setdefault(f.upload_root(outdir), []).append(f)
        for root, group in by_root.items():
            with self.errors(repo, "uploading to"), _client_output(self.token, progress):
                self.api.upload_folder(repo, "model", root, allow_patterns=[f.path_in_repo for f in group],
                                       commit_message=message, disable_tqdm=not progress)
        return None


def _client() -> Any:
    try:
        from modelscope_hub.api import HubApi
    except ImportError:
        raise ForgeError("--hub modelscope needs the ModelScope client: pip install 'gguf-forge[modelscope]'") from None
    return HubApi


class _ScrubToken(logging.Filter):
    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage(), self.token), None
        return True


@contextlib.contextmanager
def _client_output(token: str, progress: bool) -> Iterator[None]:
    """While the ModelScope client runs: its "Upload Report" (printed to stdout, where it would corrupt
    ``--json``) is dropped, and its log lines go to stderr with the token scrubbed: warnings and errors only,
    and none with ``--no-progress`` (our own one-line error says what failed)."""
    from modelscope_hub.utils.logger import get_logger

    log = get_logger()  # the client's root logger, configured now so that it does not add its handler later
    saved = (log.handlers[:], log.level, log.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScrubToken(token))
    handler.setFormatter(logging.Formatter("modelscope: %(levelname)s %(message)s"))
    log.handlers, log.propagate = ([handler] if progress else []), False
    log.setLevel(logging.WARNING if progress else logging.CRITICAL + 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.handlers, log.level, log.propagate = saved
