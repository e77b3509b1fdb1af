"""An HTTP server on 127.0.0.1 for tests that read shard sets by URL: nothing leaves the machine."""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # record, do not print
        self.server.requests.append((self.command, self.path))


@contextmanager
def http_server(root: Path) -> Iterator[tuple[str, list]]:
    """(base URL, request log of (method, path)) of a server on 127.0.0.1 (port 0) serving ``root``."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.requests
    finally:
        srv.shutdown()
        srv.server_close()


def fetched_shards(requests: list, prefix: str) -> set[str]:
    """The shard files under ``prefix`` (a URL path such as ``/shards/train``) that were requested."""
    return {p.rsplit("/", 1)[-1] for _, p in requests if p.startswith(prefix + "/") and p.endswith(".tar")}
