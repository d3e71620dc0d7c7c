"""MODEL arguments: a local directory, or a Hugging Face hub id found in the local cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ForgeError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.md", "pytorch_model*.bin", "*.tiktoken"]


def resolve_model(spec: str | os.PathLike[str], what: str = "MODEL") -> Path:
    """Return a local directory for ``spec``.

    ``spec`` is a path, or a hub repo id (``owner/name`` with optional ``@revision``) that is
    looked up in huggingface_hub's cache first (works with ``HF_HUB_OFFLINE=1``) and downloaded
    only when missing and the hub is reachable.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ForgeError(f"{what} {text}: is a file; give the model's directory (with config.json)")
        return path
    repo, _, revision = text.partition("@")
    if not _REPO_ID.match(repo):
        raise ForgeError(f"{what} {text}: no such directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision or None, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as e:  # invalid cache entries and the like
        raise ForgeError(f"{what} {text}: cannot read it from the Hugging Face cache ({e})") from None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ForgeError(
            f"{what} {text}: not a local directory and not in the Hugging Face cache, and HF_HUB_OFFLINE is set; "
            f"download it first (hf download {repo}) or give a path"
        )
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=_PATTERNS))
    except Exception as e:
        raise ForgeError(
            f"{what} {text}: not a local directory, not in the Hugging Face cache, and the download failed "
            f"({type(e).__name__}); check the name or give a path"
        ) from None
