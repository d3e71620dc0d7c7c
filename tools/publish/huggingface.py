"""Hugging Face through its own client library, huggingface_hub (``HF_ENDPOINT`` picks another endpoint).

Public surface: :class:`HuggingFace`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from .base import Hub, PlannedFile


class HuggingFace(Hub):
    name = "hf"
    title = "Hugging Face"
    description = "Hugging Face (huggingface_hub)"
    token_env = "HF_TOKEN"
    login_command = "hf auth login"
    token_note = "with a token that can write"

    def __init__(self, token: str) -> None:
        from huggingface_hub import HfApi

        super().__init__(token)
        self.api = HfApi(token=token)

    @classmethod
    def find_token(cls) -> str | None:
        from huggingface_hub import get_token

        return get_token()  # HF_TOKEN, or the login cache of `hf auth login`

    def create_repo(self, repo: str, private: bool) -> str:
        with self.errors(repo, "creating repo"):
            return str(self.api.create_repo(repo, private=private, exist_ok=True, repo_type="model"))

    def check_existing(self, repo: str, files: list[PlannedFile], outdir: Path) -> None:
        """Same size and sha256 (LFS files) or git blob id (small files) as the local file: already there."""
        from huggingface_hub.utils.sha import git_hash

        remote: dict[str, Any] = {}
        with self.errors(repo, "listing"):
            for entry in self.api.list_repo_tree(repo, recursive=True):
                if hasattr(entry, "size"):
                    remote[entry.path] = entry
        for f in files:
            r = remote.get(f.path_in_repo)
            if r is None or r.size != f.bytes:
                f.status = "upload"
            elif r.lfs is not None:
                f.status = "on hub" if r.lfs.sha256 == f.sha256 else "upload"
            else:
                f.status = "on hub" if r.blob_id == git_hash((outdir / f.source).read_bytes()) else "upload"

    def upload(self, repo: str, files: list[PlannedFile], outdir: Path, message: str, progress: bool) -> str | None:
        """Each file to the LFS storage first, one at a time, so that an interruption keeps every file sent before
        it (the storage says so on the next run); then one commit with everything."""
        from huggingface_hub import CommitOperationAdd

        with _progress_bars(progress):
            ops = []
            for f in files:
                op = CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(outdir / f.source))
                op.upload_info.sha256 = bytes.fromhex(f.sha256 or "")  # checked against the manifest; saves hashing
                ops.append(op)
            for f, op in zip(files, ops):
                with self.errors(repo, f"uploading {f.path_in_repo} to"):
                    self.api.preupload_lfs_files(repo, additions=[op])
            with self.errors(repo, "committing to"):
                info = self.api.create_commit(repo, ops, commit_message=message,
                                              commit_description="Files and sha256 as listed in manifest.json.")
        return info.oid


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars, off while the block runs unless ``enabled``."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()
