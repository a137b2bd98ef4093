"""``ecomjax serve WORKDIR [WORKDIR ...]``: load the runs read-only, replay the serving state,
compile every batch shape, then answer HTTP on uvicorn until SIGINT / SIGTERM.

On a signal uvicorn stops accepting connections and lets in-flight requests finish (up to
``graceful_s``); the batchers answer what is queued, then the process exits 0.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import uvicorn

from ecomjax.errors import InputError, MissingFileError
from ecomjax.serve.app import ServeOptions, Service


def read_token(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--token-file {path}: not found")
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise InputError(f"--token-file {path}: the token must be one word of at least 16 characters")
    return token


def build_service(workdirs: list[str | Path], options: ServeOptions) -> Service:
    from ecomjax.run import load

    started = time.perf_counter()
    service = Service([load(w) for w in workdirs], options)
    service.prepare()
    # the loaded catalogues are millions of long-lived objects (titles, parse caches): a full
    # collection over them stalls every request for ~0.5 s; they live as long as the process
    gc.collect()
    gc.freeze()
    print(f"ecomjax serve: {', '.join('/' + s.endpoint for s in service.services)} ready in "
          f"{time.perf_counter() - started:.1f} s (state: {service.journal.path})", file=sys.stderr, flush=True)
    return service


def serve(workdirs: list[str | Path], *, host: str = "127.0.0.1", port: int = 8000,
          options: ServeOptions | None = None, access_log: str | None = "-", graceful_s: float = 30.0) -> None:
    log = logging.getLogger("ecomjax.access")
    log.setLevel(logging.INFO if access_log else logging.WARNING)
    log.propagate = False
    if access_log:
        handler = logging.StreamHandler(sys.stderr) if access_log == "-" else logging.FileHandler(access_log)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    service = build_service(workdirs, options or ServeOptions())
    config = uvicorn.Config(service.app, host=host, port=port, access_log=False, log_level="warning",
                            timeout_graceful_shutdown=graceful_s, lifespan="on")
    _Server(config).run()
    print("ecomjax serve: stopped", file=sys.stderr, flush=True)


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGINT / SIGTERM it shut down for gracefully is not
    raised again afterwards: a clean stop exits 0."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
