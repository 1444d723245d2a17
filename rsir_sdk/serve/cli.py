"""``rsir serve``: run the HTTP service for one collection.

    rsir serve BUNDLE --uri ./rsir.db --collection scenes [--host 127.0.0.1] [--port 8000]
               [--read-token T | $RSIR_READ_TOKEN] [--write-token T | $RSIR_WRITE_TOKEN]
               [--archive-root DIR] [--max-upload-bytes N] [--max-k N] [--max-batch N]
               [--request-timeout S] [--concurrency N] [--max-queue N] [--insecure]
               [--max-pixels N] [--header-timeout S] [--max-incomplete-connections N]
               [--no-urls] [--no-expressions] [--allow-index]

The lead wires this module into the ``rsir`` command (:func:`add_arguments`, :func:`run`);
``python -m rsir_sdk.serve`` runs it on its own. Exit status: 0 after a clean shutdown
(SIGTERM or Ctrl-C: in-flight requests finish, then the store closes); 1 when the bundle or
collection cannot be opened; 2 for arguments that do not fit (a non-loopback host without a
token and without ``--insecure``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..cli.common import collection_name, int_in
from ..decoding import allow_pixels
from ..errors import RsirError
from ..redact import redact_uri
from .auth import RedactingFilter, is_loopback
from .config import ServeConfig

log = logging.getLogger("rsir_sdk.serve")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``rsir serve`` arguments."""
    d = ServeConfig()
    p.add_argument("bundle", help="model bundle folder (the encoder the collection was filled with)")
    p.add_argument("--uri", default="./rsir.db",
                   help="Milvus Lite file (./x.db) or server URL; default %(default)s")
    p.add_argument("--token", default=os.environ.get("MILVUS_TOKEN"),
                   help="Milvus token for servers; default $MILVUS_TOKEN (never logged)")
    p.add_argument("--collection", default=None, type=collection_name,
                   help="collection name (default: <method>_<bits>_<encoder_id>)")
    p.add_argument("--create", action="store_true",
                   help="create the collection when it does not exist (default: refuse, so a "
                        "misspelt name does not serve an empty collection)")
    g = p.add_argument_group("network and auth")
    g.add_argument("--host", default="127.0.0.1", help="address to bind; default %(default)s")
    g.add_argument("--port", type=int_in(0, 65535, "port"), default=8000, help="port; default %(default)s (0: any free)")
    g.add_argument("--read-token", default=os.environ.get("RSIR_READ_TOKEN"),
                   help="bearer token for reads; default $RSIR_READ_TOKEN (prefer the "
                        "environment: arguments show in ps)")
    g.add_argument("--write-token", default=os.environ.get("RSIR_WRITE_TOKEN"),
                   help="bearer token for writes (and reads); default $RSIR_WRITE_TOKEN")
    g.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without any token")
    g = p.add_argument_group("limits")
    g.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes,
                   help="largest request body (413 above); default %(default)s")
    g.add_argument("--max-k", type=int, default=d.max_k, help="largest k; default %(default)s")
    g.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="most images per request; default %(default)s")
    g.add_argument("--max-codes", type=int, default=d.max_codes,
                   help="most codes or ids per request; default %(default)s")
    g.add_argument("--max-hits", type=int, default=d.max_hits,
                   help="most hits one request may answer (codes x k); default %(default)s")
    g.add_argument("--request-timeout", type=float, default=d.request_timeout,
                   help="seconds of work per request (504 after); default %(default)s")
    g.add_argument("--concurrency", type=int, default=d.concurrency,
                   help="retriever calls at once (threads); default %(default)s")
    g.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="requests that may wait (503 + Retry-After beyond); default %(default)s")
    g.add_argument("--no-urls", action="store_true",
                   help="refuse image URLs (the service would download them)")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="largest image in pixels, checked from its header before decoding "
                        "(422 above); default %(default)s")
    g.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help="seconds a connection may take to send its request headers; "
                        "default %(default)s")
    g.add_argument("--body-timeout", type=float, default=d.body_timeout,
                   help="seconds a request's body may take to arrive after its headers (408 "
                        "after; a slow upload of --max-upload-bytes needs that long); default "
                        "%(default)s")
    g.add_argument("--max-incomplete-connections", type=int,
                   default=d.max_incomplete_connections,
                   help="connections waiting for their request headers at once (the oldest "
                        "is closed beyond); default %(default)s")
    g.add_argument("--url-timeout", type=float, default=d.url_timeout,
                   help="seconds one URL download may take in all; default %(default)s")
    g.add_argument("--allow-private-urls", action="store_true",
                   help="also download URLs at private, loopback and link-local addresses "
                        "(off by default: clients could probe the service's own network)")
    g.add_argument("--no-expressions", action="store_true",
                   help="refuse Milvus expression strings as filters (dict filters only)")
    g.add_argument("--allow-index", action="store_true",
                   help="let write tokens index archives inside --archive-root (POST /v1/index)")
    g = p.add_argument_group("other")
    g.add_argument("--archive-root", default=None,
                   help="folder hit images are served from (GET /v1/image); default: the "
                        "archive the bundle was trained on, when it exists here")
    g.add_argument("--threads", type=int, default=None, help="onnxruntime threads per encode")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def config_from(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` the arguments ask for (ValueError when they do not fit)."""
    return ServeConfig(
        read_token=args.read_token or None, write_token=args.write_token or None,
        archive_root=Path(args.archive_root) if args.archive_root else None,
        max_upload_bytes=args.max_upload_bytes, max_k=args.max_k, max_batch=args.max_batch,
        max_codes=args.max_codes, max_hits=args.max_hits, request_timeout=args.request_timeout,
        concurrency=args.concurrency, max_queue=args.max_queue, allow_urls=not args.no_urls,
        max_pixels=args.max_pixels, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_incomplete_connections=args.max_incomplete_connections,
        url_timeout=args.url_timeout, allow_private_urls=args.allow_private_urls,
        allow_expressions=not args.no_expressions, allow_index=args.allow_index,
    )


def _setup_logging(level: str, secrets: Sequence[str | None]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "pymilvus", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit status."""
    secrets = [args.read_token, args.write_token, args.token]
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"rsir serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    allow_pixels(config.max_pixels)  # a --max-pixels above Pillow's own guard is honoured
    if args.read_token and args.read_token == args.write_token:
        print("rsir serve: the read and write tokens must differ", file=sys.stderr)
        return EXIT_USAGE
    if not is_loopback(args.host) and not (config.read_token or config.write_token) \
            and not args.insecure:
        print(f"rsir serve: refusing to serve on {args.host} (not a loopback address) without a "
              f"token: set RSIR_READ_TOKEN / RSIR_WRITE_TOKEN, or pass --insecure to serve "
              f"anyone who can reach it", file=sys.stderr)
        return EXIT_USAGE
    busy = address_problem(args.host, args.port)
    if busy:  # before the collection is opened; uvicorn would log it among its start lines
        print(f"rsir serve: {busy}", file=sys.stderr)
        return EXIT_ERROR
    try:
        from .app import create_app
    except ImportError as exc:
        print(f"rsir serve needs the serve extra (pip install 'rsir-sdk[serve]'): {exc}",
              file=sys.stderr)
        return EXIT_ERROR
    _setup_logging(args.log_level, secrets)
    try:
        retriever = open_retriever(args)
    except RsirError as exc:
        print(f"rsir serve: {redact(str(exc), secrets)}", file=sys.stderr)
        return EXIT_ERROR

    app = create_app(retriever, config)
    log.info("rsir serve: %s collection %s at %s (auth: %s)", retriever.bundle.method,
             retriever.store.collection, redact_uri(args.uri), app.state.service.auth.describe())
    unserved = images_outside_root(retriever, app.state.service.archive_root)
    if unserved:
        log.warning("rsir serve: %s", unserved)
    return serve_app(app, args.host, args.port, grace=config.request_timeout + 5,
                     header_timeout=config.header_timeout,
                     max_incomplete=config.max_incomplete_connections)


def open_retriever(args: argparse.Namespace):
    """The Retriever for the arguments; refuses a missing collection unless ``--create``."""
    from ..errors import CollectionNotFoundError
    from ..retriever import Retriever
    from ..store import list_collections

    retriever = Retriever(args.bundle, uri=args.uri, collection=args.collection,
                          token=args.token, threads=args.threads)
    if retriever.store.exists:
        return retriever
    if args.create:  # made now, so that searches answer "no hits" rather than 404 until a write
        try:
            retriever.store.create()
        except BaseException:
            retriever.close()
            raise
        return retriever
    name = retriever.collection
    retriever.close()
    others = [n for n in list_collections(args.uri, args.token) if n != name]
    there = f" (collections there: {', '.join(others)})" if others else ""
    raise CollectionNotFoundError(
        f"collection {name!r} does not exist at {redact_uri(args.uri)}{there}: fill it first "
        f"(rsir index), or pass --create to serve a new, empty one")


def images_outside_root(retriever: Any, root: Path | None, sample: int = 20) -> str | None:
    """Why the page would show "no image" for the collection's hits, or None: read from the
    paths of a few stored items. Without ``--archive-root`` the root is the bundle's training
    archive, which an archive indexed elsewhere is not under (the page then showed "no image"
    on every card with no hint)."""
    import numpy as np

    from .files import resolve_in_root

    if not retriever.store.exists:
        return None
    probe = np.zeros((1, retriever.encoder.bits // 8), np.uint8)
    paths = [h.path for h in retriever.search_codes(probe, k=sample)[0] if h.path]
    if not paths:
        return None
    missing = 0
    for path in paths:
        try:
            resolve_in_root(root, path)
        except Exception:  # outside the root, or not there: the page cannot show it
            missing += 1
    if not missing:
        return None
    where = (f"the archive root {root}" if root is not None else "no archive root (the bundle "
             "records no training archive that is here)")
    return (f"{missing} of {len(paths)} sampled items' images cannot be served from {where}: "
            f"the page and GET /v1/image show no image for them; pass --archive-root with the "
            f"folder the collection was indexed from (e.g. {paths[0]!r:.120})")


def address_problem(host: str, port: int) -> str | None:
    """Why the service cannot listen on ``host:port`` (in use, not this machine's, a bad
    name), or None: checked by binding it once as uvicorn will (``SO_REUSEADDR``), so the
    user reads one line instead of uvicorn's start-up log with the error in the middle."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = " (another server? choose another --port)" if \
            exc.errno == errno.EADDRINUSE else ""
        return f"cannot listen on {host}:{port}: {reason}{hint}"
    return None


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """``text`` with each secret replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def serve_app(app: Any, host: str, port: int, grace: float = 35.0,
              header_timeout: float = 10.0, max_incomplete: int = 256) -> int:
    """Run ``app`` with uvicorn; SIGTERM/SIGINT shut down gracefully and return 0.

    HTTP/1.1 goes through :func:`~rsir_sdk.serve.limits.guarded_h11`: a connection gets
    ``header_timeout`` seconds to send a request's headers, and at most ``max_incomplete``
    connections wait for theirs at once (slow-header clients cannot hold sockets forever).
    """
    import uvicorn

    from .limits import guarded_h11

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=int(grace + 0.999), server_header=False,
                            lifespan="on", http=guarded_h11(header_timeout, max_incomplete))
    server = _graceful_server(config, on_force=app.state.service.gate.abandon,
                              on_stop=lambda: _note_stop(app.state.service))
    # uvicorn puts back the handlers it found once it has shut down: make those ignore a late
    # repeat of the signal, so that the process, already closing, still exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _late_signal)
    server.run()
    if server.force_exit:
        _forced_exit(app.state.service)
    if server.started and app.state.service.gate.running:
        _leave_running_calls(app.state.service)
    return EXIT_OK if server.started else EXIT_ERROR


def _leave_running_calls(service: Any) -> None:
    """After a graceful shutdown whose grace ended with calls still running (a URL download:
    up to --url-timeout): the store is closed; leave now, exit status 0. Python would join the
    worker threads at exit (39.8 s after SIGTERM for an 11 s grace)."""
    log.warning("exiting with %d call(s) still running past the grace", service.gate.running)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)


def _forced_exit(service: Any) -> None:
    """After a second Ctrl-C: uvicorn skipped the app's shutdown, and Python would wait at exit
    for the worker threads (a URL download: up to --url-timeout). Close the store without
    waiting for them and leave now, exit status 130."""
    log.warning("forced exit: %d call(s) in flight abandoned", service.gate.running)
    service.close(0)  # done already by the app's shutdown, unless that failed
    logging.shutdown()
    os._exit(EXIT_INTERRUPTED)


def _late_signal(sig: int, frame: Any) -> None:
    log.info("signal %d received while exiting: ignored", sig)


def _note_stop(service: Any) -> None:
    """The moment the first stop signal came: the shutdown's grace counts from it."""
    if service.stop_asked_at is None:
        service.stop_asked_at = time.monotonic()


def _graceful_server(config: Any, on_force: Callable[[], None],
                     on_stop: Callable[[], None]) -> Any:
    """uvicorn's Server, except that a handled SIGTERM/SIGINT ends with exit status 0, and a
    second Ctrl-C (uvicorn's forced exit) still shuts the app down, without waiting.

    uvicorn re-raises the signal it shut down for once it has finished (so the process would
    die by that signal after the clean shutdown); a service manager should see 0 instead. On
    a forced exit uvicorn skips the app's shutdown, whose task is then cancelled (a traceback
    in the log, the store left open): here the app is told to stop waiting (``on_force``) and
    shut down all the same. ``on_stop`` is told when a stop signal comes (the app's grace
    counts from the first).
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            on_stop()
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig in (signal.SIGTERM, signal.SIGINT) and captured and sig in captured:
                captured.remove(sig)  # graceful shutdown: do not re-raise it afterwards
            if self.force_exit:
                on_force()

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets)
            if self.force_exit:
                await self.lifespan.shutdown()

    return Server(config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rsir_sdk.serve ...``."""
    parser = argparse.ArgumentParser(prog="rsir serve", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
