"""Shared fixtures. Real-data tests read $ECOMJAX_DATA_DIR; under CI a missing file fails."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# One compilation cache for the session and the processes it starts (killed-and-resumed runs, the
# 8-device runs compile the programs the in-process runs compiled): same programs, less waiting.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ecomjax-tests-xla-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def real_data(relative: str) -> Path:
    """Path of a real dataset file, or skip (locally) / fail (when CI is set) if it is absent."""
    root = os.environ.get("ECOMJAX_DATA_DIR")
    path = Path(root) / relative if root else None
    if path is None or not path.is_file():
        message = f"real data {relative!r} not found (ECOMJAX_DATA_DIR={root!r})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def beauty_path() -> Path:
    return real_data("amazon-beauty/Beauty.txt")


# --- a local mirror of the public download URLs (tests/test_download.py, tests/test_notebooks.py) --

class Mirror:
    """Files by URL path on 127.0.0.1; ``requests`` lists the paths asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve(self, name: str) -> None:
        """Serve the real files of dataset ``name`` at their registered URLs."""
        from ecomjax.data import download

        for file in download.dataset(name).files:
            if file.remote is not None and file.convert is None:
                self.files[url_path(file)] = real_data(file.path).read_bytes()


def url_path(file) -> str:
    return "/" + file.remote.url.split("://", 1)[1]
