"""A local stand-in for the Hugging Face Hub, speaking the HTTP protocol the real huggingface_hub client uses.

It implements what an upload needs (read from huggingface_hub's own source, hf_api.py / _commit_api.py / lfs.py):

- ``POST /api/repos/create``                          -> 200 ``{"url"}``, 409 when the repo exists
- ``GET  /api/models/{repo}/tree/{rev}``              -> files with ``oid`` (git sha1) and ``lfs.oid`` (sha256)
- ``POST /api/validate-yaml``                         -> model card front matter check (must parse as YAML)
- ``POST /api/models/{repo}/preupload/{rev}``         -> ``uploadMode`` lfs|regular per file, remote ``oid``
- ``POST /{repo}.git/info/lfs/objects/batch``         -> LFS batch API, basic transfer; no ``actions`` for
                                                          objects already stored (that is how uploads resume)
- ``PUT  /lfs-objects/{oid}``                         -> the upload itself (checked against its sha256)
- ``POST /lfs-objects/{oid}/verify``                  -> LFS verify
- ``POST /api/models/{repo}/commit/{rev}``            -> ndjson commit (header, file base64, lfsFile)

Every ``/api`` and LFS batch call needs ``Authorization: Bearer <token>``. What is stored can be read back from
``server.repos[repo]["files"][path]`` (bytes). Faults for tests: ``drop_put`` (set of sha256 oids whose LFS PUT
is cut mid-body, with ``dropped`` set when it happens), ``fail`` (endpoint name -> HTTP status, answered with a
body that echoes the caller's Authorization header, as a careless server might).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from localserver import JsonHandler, LocalServer


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


class HubServer(LocalServer):
    """The mock hub on 127.0.0.1 (a free port), run in a daemon thread; use as a context manager."""

    def __init__(self, token: str):
        self.lfs: dict[str, bytes] = {}
        self.drop_put: set[str] = set()
        super().__init__(token)

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        # -- plumbing -------------------------------------------------------------------------------------
        def _authorized(self, endpoint: str) -> bool:
            auth = self.headers.get("Authorization", "")
            if endpoint in hub.fail:
                self._body()
                self._send(hub.fail[endpoint], {"error": f"{endpoint} failed; request had Authorization: {auth}"})
                return False
            if auth != f"Bearer {hub.token}":
                self._body()
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return False
            return True

        def _repo(self, repo: str) -> dict[str, Any] | None:
            r = hub.repos.get(repo)
            if r is None:
                self._body()
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return r

        # -- routes ---------------------------------------------------------------------------------------
        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.log.append(("GET", path))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
            if m and self._authorized("tree") and (r := self._repo(m.group(1))) is not None:
                prefix = (m.group(3) or "/").lstrip("/")
                entries, folders = [], set()
                for p, f in sorted(r["files"].items()):
                    if prefix and not p.startswith(prefix.rstrip("/") + "/"):
                        continue
                    parts = p.split("/")
                    for i in range(1, len(parts)):
                        folders.add("/".join(parts[:i]))
                    entry = {"type": "file", "path": p, "size": len(f["data"])}
                    if f["lfs"]:
                        oid = hashlib.sha256(f["data"]).hexdigest()
                        pointer = lfs_pointer(oid, len(f["data"]))
                        entry.update(oid=git_sha1(pointer), lfs={"oid": oid, "size": len(f["data"]),
                                                                 "pointerSize": len(pointer)})
                    else:
                        entry["oid"] = git_sha1(f["data"])
                    entries.append(entry)
                entries += [{"type": "directory", "path": d, "oid": git_sha1(d.encode()), "size": 0}
                            for d in sorted(folders)]
                self._send(200, entries)
            elif not m:
                self._send(404, {"error": f"not implemented: GET {path}"})

        def do_PUT(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.log.append(("PUT", path))
            m = re.fullmatch(r"/lfs-objects/([0-9a-f]{64})", path)
            if not m:
                self._body()
                self._send(404, {"error": f"not implemented: PUT {path}"})
                return
            oid = m.group(1)
            if oid in hub.drop_put:
                self._drop_half_way(hub)  # half the file arrives, then the connection dies
                return
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                self._send(400, {"error": "sha256 mismatch"})
                return
            with hub._lock:
                hub.lfs[oid] = data
            self._send(200, None)

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.log.append(("POST", path))
            if path == "/api/repos/create":
                if not self._authorized("create"):
                    return
                body = json.loads(self._body())
                repo = f"{body['organization']}/{body['name']}"
                if repo in hub.repos:
                    self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo}"})
                    return
                hub.repos[repo] = {"private": body.get("visibility") == "private", "files": {}, "commits": []}
                self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
            elif path == "/api/validate-yaml":
                if not self._authorized("validate-yaml"):
                    return
                content = json.loads(self._body())["content"]
                errors = []
                if content.startswith("---"):
                    try:
                        front = yaml.safe_load(content.split("---", 2)[1])
                        if front is not None and not isinstance(front, dict):
                            errors.append({"message": "metadata must be a mapping"})
                    except (yaml.YAMLError, IndexError) as e:
                        errors.append({"message": f"invalid YAML: {e}"})
                self._send(400 if errors else 200, {"errors": errors, "warnings": []})
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
                if not self._authorized("preupload") or (r := self._repo(m.group(1))) is None:
                    return
                out = []
                for f in json.loads(self._body())["files"]:
                    sample = base64.b64decode(f["sample"])
                    lfs = f["path"].endswith(".gguf") or f["size"] > 10_000_000 or b"\0" in sample
                    have = r["files"].get(f["path"])
                    oid = None
                    if have is not None:
                        oid = hashlib.sha256(have["data"]).hexdigest() if have["lfs"] else git_sha1(have["data"])
                    out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                "shouldIgnore": False, "oid": oid})
                self._send(200, {"files": out, "commitOid": "0" * 40})
            elif m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
                if not self._authorized("lfs-batch") or self._repo(m.group(1)) is None:
                    return
                body = json.loads(self._body())
                assert body["operation"] == "upload" and "basic" in body["transfers"], body
                objects = []
                for o in body["objects"]:
                    obj = {"oid": o["oid"], "size": o["size"]}
                    if o["oid"] not in hub.lfs:
                        href = f"{hub.url}/lfs-objects/{o['oid']}"
                        obj["actions"] = {"upload": {"href": href}, "verify": {"href": href + "/verify"}}
                    objects.append(obj)
                self._send(200, {"transfer": "basic", "objects": objects})
            elif m := re.fullmatch(r"/lfs-objects/([0-9a-f]{64})/verify", path):
                if not self._authorized("lfs-verify"):
                    return
                body = json.loads(self._body())
                ok = body["oid"] in hub.lfs and len(hub.lfs[body["oid"]]) == body["size"]
                self._send(200 if ok else 404, {} if ok else {"error": "object not found"})
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
                if not self._authorized("commit") or (r := self._repo(m.group(1))) is None:
                    return
                lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
                staged = dict(r["files"])
                for item in lines[1:]:
                    v = item["value"]
                    if item["key"] == "file":
                        staged[v["path"]] = {"data": base64.b64decode(v["content"]), "lfs": False}
                    elif item["key"] == "lfsFile":
                        if v["oid"] not in hub.lfs:
                            self._send(422, {"error": f"LFS object {v['oid']} for {v['path']} was never uploaded"})
                            return
                        staged[v["path"]] = {"data": hub.lfs[v["oid"]], "lfs": True}
                    elif item["key"] == "deletedFile":
                        staged.pop(v["path"], None)
                oid = hashlib.sha1(json.dumps(lines).encode()).hexdigest()
                r["files"] = staged
                r["commits"].append({"oid": oid, "summary": lines[0]["value"]["summary"],
                                     "paths": [x["value"]["path"] for x in lines[1:]]})
                self._send(200, {"commitUrl": f"{hub.url}/{m.group(1)}/commit/{oid}", "commitOid": oid,
                                 "pullRequestUrl": None})
            else:
                self._body()
                self._send(404, {"error": f"not implemented: POST {path}"})

    return Handler
