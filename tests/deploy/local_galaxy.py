"""A Galaxy server on 127.0.0.1 that serves collection artifacts from a directory through the v3 API
`ansible-galaxy collection install` speaks: enough to install collections/requirements.yml (names and
version ranges resolved by ansible-galaxy itself) on a machine that cannot reach galaxy.ansible.com."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STAMP = "2026-01-01T00:00:00Z"


@dataclass
class Artifact:
    namespace: str
    name: str
    version: str
    path: Path
    dependencies: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> Artifact:
        with tarfile.open(path) as tar:
            member = tar.extractfile("MANIFEST.json")
            assert member is not None, f"{path}: no MANIFEST.json"
            info = json.load(member)["collection_info"]
        return cls(info["namespace"], info["name"], info["version"], path, info.get("dependencies") or {})


@dataclass
class Galaxy:
    url: str
    artifacts: list[Artifact]
    downloads: list[str] = field(default_factory=list)  # file names served, in order

    def routes(self, path: str) -> tuple[int, Any]:
        """(status, JSON document or artifact path) for a request path (ansible-galaxy asks for /api)."""
        if path == "/api":
            path = "/api/"
        if path == "/api/":
            return 200, {"available_versions": {"v3": "v3/"}}
        if m := re.fullmatch(r"/download/([^/]+)", path):
            found = [a for a in self.artifacts if a.path.name == m[1]]
            return (200, found[0].path) if found else (404, {"errors": ["no such artifact"]})
        m = re.fullmatch(r"/api/v3/collections/([^/]+)/([^/]+)/(?:versions/(?:([^/]+)/)?)?", path)
        if not m:
            return 404, {"errors": [f"not found: {path}"]}
        namespace, name, version = m.groups()
        versions = [a for a in self.artifacts if (a.namespace, a.name) == (namespace, name)]
        if not versions:
            return 404, {"errors": [f"no collection {namespace}.{name}"]}
        base = f"/api/v3/collections/{namespace}/{name}/"
        if path == base:
            return 200, {"namespace": namespace, "name": name, "created_at": STAMP, "updated_at": STAMP}
        if version is None:
            data = [{"version": a.version, "href": f"{base}versions/{a.version}/"} for a in versions]
            return 200, {"meta": {"count": len(data)}, "links": {"next": None}, "data": data}
        for a in versions:
            if a.version == version:
                return 200, {
                    "namespace": {"name": namespace},
                    "collection": {"name": name},
                    "version": version,
                    "href": f"{base}versions/{version}/",
                    "download_url": f"{self.url}download/{a.path.name}",
                    "artifact": {
                        "filename": a.path.name,
                        "sha256": hashlib.sha256(a.path.read_bytes()).hexdigest(),
                        "size": a.path.stat().st_size,
                    },
                    "metadata": {"dependencies": a.dependencies},
                }
        return 404, {"errors": [f"no version {version} of {namespace}.{name}"]}


@contextmanager
def serve(directory: Path) -> Iterator[Galaxy]:
    """The server for every *.tar.gz in directory, on a free port, stopped on exit."""
    artifacts = [Artifact.read(p) for p in sorted(directory.glob("*.tar.gz"))]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = galaxy.routes(self.path.split("?", 1)[0])
            if isinstance(body, Path):
                galaxy.downloads.append(body.name)
                payload, kind = body.read_bytes(), "application/gzip"
            else:
                payload, kind = json.dumps(body).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    galaxy = Galaxy(f"http://127.0.0.1:{server.server_address[1]}/", artifacts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield galaxy
    finally:
        server.shutdown()
        server.server_close()
