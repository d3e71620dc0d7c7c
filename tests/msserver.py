"""A local stand-in for ModelScope, speaking the HTTP protocol the real ``modelscope-hub`` client (0.5.x) uses for
``HubApi.repo_exists`` / ``create_repo`` / ``upload_folder`` (read from its api.py, _openapi.py, _legacy_api.py,
_upload.py, errors.py):

- ``GET  /openapi/v1/models/{owner}/{name}``                      -> ``{"success", "data"}``; 404 when missing
- ``GET  /api/v1/models/{owner}/{name}``                          -> the legacy fallback of the same (404 too)
- ``POST /api/v1/models``                                         -> create: ``{Path, Name, Visibility, License}``;
                                                                     400 "already exists" for an existing repo
- ``POST /api/v1/repos/models/{repo}/info/lfs/objects/batch``     -> ``{"Data": {"objects": [...]}}``; an object
                                                                     already stored gets no ``actions`` (that is how
                                                                     uploads resume)
- ``PUT  /lfs-objects/{sha256}``                                  -> the blob itself (checked against its sha256)
- ``POST /api/v1/repos/models/{repo}/commit/{revision}``          -> ``{commit_message, actions: [...]}``, actions
                                                                     ``type`` "normal" (base64 content) or "lfs"
                                                                     (sha256 of an uploaded blob)

Every call needs ``Authorization: Bearer <token>`` (the client also sends it as the ``m_session_id`` cookie).
Stored files: :meth:`MsServer.files`. Faults for tests: ``drop_put`` (sha256 oid -> how many of its next PUTs are
cut after half the body; ``dropped`` is set when it happens), ``fail`` (endpoint name "create", "batch" or "commit" -> HTTP status,
answered with a message that echoes the caller's Authorization header, as a careless server might). Every request is logged in ``log`` as (method, path).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from localserver import JsonHandler, LocalServer

_REPO = r"([^/]+/[^/]+)"


class MsServer(LocalServer):
    """The mock ModelScope on 127.0.0.1 (a free port), run in a daemon thread; use as a context manager."""

    def __init__(self, token: str):
        self.blobs: dict[str, bytes] = {}
        self.drop_put: dict[str, int] = {}
        super().__init__(token)

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)


def _make_handler(ms: MsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def _legacy(self, status: int, data: Any = None, message: str = "") -> None:
            """The legacy /api/v1 envelope."""
            self._send(status, {"Code": 200 if status < 400 else status, "Data": data, "Message": message,
                                "Success": status < 400, "RequestId": "local"})

        def _authorized(self) -> bool:
            if self.headers.get("Authorization", "") != f"Bearer {ms.token}":
                self._body()
                self._legacy(401, message="token is invalid or expired")
                return False
            return True

        def _failed(self, endpoint: str) -> bool:
            if endpoint not in ms.fail:
                return False
            self._body()
            self._legacy(ms.fail[endpoint], message=f"{endpoint} failed; request had Authorization: "
                                                    f"{self.headers.get('Authorization', '')}")
            return True

        def _repo(self, repo: str) -> dict[str, Any] | None:
            r = ms.repos.get(repo)
            if r is None:
                self._body()
                self._legacy(404, message=f"model {repo} not found")
            return r

        def _info(self, repo: str) -> dict[str, Any]:
            owner, name = repo.split("/")
            return {"Path": owner, "Name": name, "Visibility": ms.repos[repo]["visibility"]}

        # -- routes ---------------------------------------------------------------------------------------------
        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            ms.log.append(("GET", path))
            if m := re.fullmatch(rf"/openapi/v1/models/{_REPO}", path):
                if self._authorized() and self._repo(m.group(1)) is not None:
                    owner, name = m.group(1).split("/")
                    vis = ms.repos[m.group(1)]["visibility"]
                    self._send(200, {"success": True, "data": {"id": m.group(1), "owner": owner, "name": name,
                                                               "private": vis == 1}})
            elif m := re.fullmatch(rf"/api/v1/models/{_REPO}", path):
                if self._authorized() and self._repo(m.group(1)) is not None:
                    self._legacy(200, self._info(m.group(1)))
            else:
                self._legacy(404, message=f"not implemented: GET {path}")

        def do_PUT(self) -> None:
            path = unquote(urlsplit(self.path).path)
            ms.log.append(("PUT", path))
            m = re.fullmatch(r"/lfs-objects/([0-9a-f]{64})", path)
            if not m:
                self._body()
                self._legacy(404, message=f"not implemented: PUT {path}")
                return
            if not self._authorized():
                return
            oid = m.group(1)
            if ms.drop_put.get(oid, 0) > 0:
                ms.drop_put[oid] -= 1
                self._drop_half_way(ms)  # half the blob arrives, then the connection dies
                return
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                self._legacy(400, message="sha256 mismatch")
                return
            with ms._lock:
                ms.blobs[oid] = data
            self._legacy(200)

        def do_POST(self) -> None:
            path = unquote(urlsplit(self.path).path)
            ms.log.append(("POST", path))
            if not self._authorized():
                return
            if path == "/api/v1/models":
                if self._failed("create"):
                    return
                body = json.loads(self._body())
                repo = f"{body['Path']}/{body['Name']}"
                with ms._lock:
                    if repo in ms.repos:
                        self._legacy(400, message=f"model {repo} already exists")
                        return
                    ms.repos[repo] = {"visibility": body["Visibility"], "license": body.get("License"),
                                      "files": {}, "commits": []}
                self._legacy(200, self._info(repo))
            elif m := re.fullmatch(rf"/api/v1/repos/models/{_REPO}/info/lfs/objects/batch", path):
                if self._failed("batch") or self._repo(m.group(1)) is None:
                    return
                body = json.loads(self._body())
                assert body["operation"] == "upload", body
                objects = []
                for o in body["objects"]:
                    obj = {"oid": o["oid"], "size": o["size"]}
                    if o["oid"] not in ms.blobs:
                        obj["actions"] = {"upload": {"href": f"{ms.url}/lfs-objects/{o['oid']}"}}
                    objects.append(obj)
                self._legacy(200, {"objects": objects})
            elif m := re.fullmatch(rf"/api/v1/repos/models/{_REPO}/commit/([^/]+)", path):
                if self._failed("commit") or (r := self._repo(m.group(1))) is None:
                    return
                body = json.loads(self._body())
                staged = dict(r["files"])
                for a in body["actions"]:
                    if a["action"] == "delete":
                        staged.pop(a["path"], None)
                    elif a["type"] == "lfs":
                        blob = ms.blobs.get(a["sha256"])
                        if blob is None or len(blob) != a["size"]:
                            self._legacy(400, message=f"lfs object {a['sha256']} for {a['path']} was never uploaded")
                            return
                        staged[a["path"]] = {"data": blob, "lfs": True}
                    else:
                        data = base64.b64decode(a["content"])
                        if len(data) != a["size"]:
                            self._legacy(400, message=f"{a['path']}: size {a['size']} != content {len(data)}")
                            return
                        staged[a["path"]] = {"data": data, "lfs": False}
                oid = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
                with ms._lock:
                    r["files"] = staged
                    r["commits"].append({"oid": oid, "revision": m.group(2), "message": body["commit_message"],
                                         "paths": [a["path"] for a in body["actions"]]})
                self._legacy(200, {"CommitId": oid})
            else:
                self._body()
                self._legacy(404, message=f"not implemented: POST {path}")

    return Handler
