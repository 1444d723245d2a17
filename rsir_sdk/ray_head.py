"""A local Ray started from a clean helper process, so that no Ray process is forked from ours.

Why: Ray starts its GCS, raylet and dashboard with ``subprocess.Popen(preexec_fn=...)``, which
makes Python ``fork()`` the calling process and run every registered at-fork handler in the
child before ``exec``. In a process with live gRPC channels (every Milvus connection is one),
such a child can hang or abort before it becomes the Ray process: measured here, a store
queried from two threads while ``ray.init`` ran 8 times gave one start that timed out and one
dashboard that died with SIGABRT; in CI all three tries of one start timed out waiting for a GCS
that never wrote a line. A fresh interpreter that imports nothing but Ray forks safely.

:class:`LocalHead` runs ``python -m rsir_sdk.ray_head N`` (this module), which starts a local
Ray with N CPUs, prints the GCS address on one line and waits for its standard input to close;
the caller connects to that address as a driver. Closing the head (or the caller dying, which
closes the pipe) shuts that Ray down; Ray's own processes die with the helper (Ray's
fate-sharing), so a SIGKILL to the caller's process group leaves nothing running. The helper
runs in a session of its own: a terminal's Ctrl-C reaches the caller only, which writes what
was encoded and then closes the head (when the Ctrl-C reached Ray too, its GCS died first and
took the caller down with it: exit status 1 and no word, in about one run in three).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from .errors import RsirError

log = logging.getLogger(__name__)

#: tries at starting a local Ray when its start-up times out (a loaded machine)
START_ATTEMPTS = 3
#: seconds a retry gives the new GCS to publish its port (Ray's default: 30)
RETRY_GCS_WAIT_S = 90
#: where a local Ray's latest session keeps its processes' logs
RAY_LOGS = os.path.join(tempfile.gettempdir(), "ray", "session_latest", "logs")
#: seconds a helper gets, beyond the GCS's wait, to print its Ray's address
HEAD_START_SLACK_S = 60

#: seconds the quick look at a cluster's address waits for a TCP answer before Ray is asked
PROBE_TIMEOUT_S = 5.0

#: the line the helper prints once its Ray runs (followed by the GCS address)
READY = "rsir-ray-head-address "
#: the line the helper prints when its Ray did not start (followed by the error, one line)
FAILED = "rsir-ray-head-error "


class LocalHead:
    """A helper process running a local Ray with ``cpus`` CPUs (see the module)."""

    def __init__(self, cpus: int, timeout: float):
        """Start the helper and wait up to ``timeout`` seconds for its Ray's address; raises
        ``RuntimeError`` with the helper's one-line reason when its Ray does not start."""
        self.auth = _auth_settings()
        # the helper's stderr holds Ray's start-up notices only (its failure comes as a line
        # on stdout; Ray's processes log under RAY_LOGS): discarded, so nothing is left behind
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "rsir_sdk.ray_head", str(int(cpus))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, **self.auth}, start_new_session=True)
        try:
            self.address = self._wait_for_address(timeout)
        except BaseException:
            self.close(timeout=5)  # a helper stuck in Ray's start-up is killed
            raise

    def _wait_for_address(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"Timed out waiting for a local Ray to start ({timeout:g} s)")
            ready, _, _ = select.select([self._proc.stdout], [], [], left)
            if not ready:
                continue
            line = self._proc.stdout.readline().decode("utf-8", "replace")
            if not line:  # the helper exited
                raise RuntimeError(f"the Ray helper process exited with code "
                                   f"{self._proc.wait()} before its Ray ran")
            if line.startswith(READY):
                return line[len(READY):].strip()
            if line.startswith(FAILED):
                raise RuntimeError(line[len(FAILED):].strip())

    def close(self, timeout: float = 30.0) -> None:
        """Shut the helper's Ray down (killed after ``timeout`` seconds)."""
        proc = self._proc
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class RayUnavailableError(RsirError, RuntimeError):
    """Ray is not installed, or the cluster cannot be reached or started."""


class RayConnection:
    """This process's driver connection, and the local Ray it started (``head``) if any."""

    def __init__(self, ray: Any, head: LocalHead | None, environment: contextlib.ExitStack):
        self._ray, self.head, self._environment = ray, head, environment

    def close(self) -> None:
        """Disconnect the driver, shut the local Ray down, put the environment back."""
        with contextlib.suppress(Exception), _stderr_quiet():
            self._ray.shutdown()
        if self.head is not None:
            self.head.close()
        self._environment.close()


def connect(ray: Any, address: str | None, workers: int,
            start_head: Callable[[int, float], LocalHead] = LocalHead) -> RayConnection | None:
    """Connect this process to ``address``, or to a local Ray of ``workers`` CPUs started by
    a :class:`LocalHead` (up to ``START_ATTEMPTS`` tries when its start-up times out); ``None``
    when Ray was already initialized here (the caller's own connection is used and kept)."""
    if ray.is_initialized():
        return None
    _quiet_ray_loggers()
    if not address and cluster_address(None):
        log.info("using the Ray cluster at %s (RAY_ADDRESS)", cluster_address(None))
    address = cluster_address(address)
    if address:
        _check_something_listens(address)
    head = None if address else _start_head(start_head, max(1, workers))
    environment = contextlib.ExitStack()
    try:
        # the driver presents the helper's token for as long as it is connected
        environment.enter_context(_environment(head.auth if head is not None else {}))
        with _stderr_quiet(), warnings.catch_warnings(), _signal_handlers_kept():
            warnings.simplefilter("ignore")  # Ray's connection warnings
            ray.init(address=head.address if head is not None else address,
                     include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True)
    except Exception as exc:  # ConnectionError, RuntimeError, ... from Ray
        RayConnection(ray, head, environment).close()
        where = _cluster_named(address) if address else "a local Ray"
        hint = ("; a cluster that guards its GCS with a token needs RAY_AUTH_MODE=token and its "
                "RAY_AUTH_TOKEN in this environment" if address and "RAY_AUTH_MODE" not in
                os.environ else "")
        raise RayUnavailableError(f"cannot connect to {where}: {type(exc).__name__}: "
                                  f"{_one_line(exc)}{hint}") from None
    with warnings.catch_warnings():  # Ray Data's deprecation notices of its own settings
        warnings.simplefilter("ignore")
        ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    return RayConnection(ray, head, environment)


def _cluster_named(address: str) -> str:
    """The cluster at ``address`` in a message, saying when the address came from RAY_ADDRESS."""
    from_env = os.environ.get("RAY_ADDRESS", "").strip() == address
    return f"the Ray cluster at {address}" + (" (RAY_ADDRESS)" if from_env else "")


def _check_something_listens(address: str) -> None:
    """Refuse at once an ``address`` where nothing listens or whose host has no address:
    Ray's client tried three times for 30 s in all before saying so (a mistyped port).
    An answer that does not come within ``PROBE_TIMEOUT_S`` (a slow network) is left to Ray."""
    if address == "auto":
        return
    try:
        parts = urlsplit(address if "://" in address else f"//{address}")
        host, port = parts.hostname, parts.port or (10001 if parts.scheme == "ray" else 6379)
    except ValueError:
        raise RayUnavailableError(f"cannot read the Ray address {address!r}: expected "
                                  "ray://HOST:PORT or HOST:PORT") from None
    if not host or parts.scheme not in ("", "ray"):  # another scheme: a client of its own
        return                                         # (anyscale://...), left to Ray
    where = _cluster_named(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except socket.gaierror as exc:
        raise RayUnavailableError(f"cannot connect to {where}: cannot resolve {host!r} "
                                  f"({exc.strerror})") from None
    except ConnectionRefusedError:
        raise RayUnavailableError(f"cannot connect to {where}: nothing listens at "
                                  f"{host}:{port} (connection refused); is the cluster up, "
                                  "and is this its address?") from None
    except OSError:  # a time-out or an unreachable network: Ray tries, and says what it found
        return


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put back this process's SIGTERM and SIGINT handlers after ``ray.init``, which installs
    its own: a SIGTERM (``docker stop``, ``timeout``) then printed Ray's "*** SIGTERM received"
    stack and ended the run with status 15 or -6, instead of the Ctrl-C path (what was
    encoded written, status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def cluster_address(address: str | None) -> str | None:
    """The cluster a run connects to: ``address``, else ``RAY_ADDRESS`` (Ray's own way to name
    one: it reached the local helper, whose new Ray then refused "num_cpus ... must not be
    provided"); ``None`` (and ``local``, given or in ``RAY_ADDRESS``) is a local Ray started
    for the run, in the helper (``ray.init(address="local")`` here forked this process)."""
    chosen = (address or os.environ.get("RAY_ADDRESS", "")).strip()
    return chosen if chosen not in ("", "local") else None


def _start_head(start_head: Callable[[int, float], LocalHead], cpus: int) -> LocalHead:
    """A local Ray in a helper; Ray's fixed start-up limits (30 s for the raylet to register,
    the GCS's wait for its port file) can run out on a small loaded machine, so a time-out is
    tried again, giving the GCS longer."""
    for attempt in range(1, START_ATTEMPTS + 1):
        with _gcs_wait(attempt) as gcs_wait_s:
            try:
                return start_head(cpus, gcs_wait_s + HEAD_START_SLACK_S)
            except RuntimeError as exc:
                timed_out = "timed out" in str(exc).lower()
                if attempt < START_ATTEMPTS and timed_out:
                    log.info("a local Ray did not start in time; trying again (%d of %d)",
                             attempt + 1, START_ATTEMPTS)
                    continue
                loaded = (f"after {attempt} tries; the machine may be too loaded: "
                          if timed_out else "")
                hint = f" ({loaded}--engine local needs no Ray; Ray's logs: {RAY_LOGS})"
                raise RayUnavailableError(
                    f"cannot start a local Ray: {_one_line(exc)}{hint}") from None
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _gcs_wait(attempt: int) -> Iterator[int]:
    """Yields the seconds the GCS waits for its port: Ray's 30 s on a first try,
    ``RETRY_GCS_WAIT_S`` on a retry (set in the environment the helper inherits); a value the
    user set is left alone."""
    name = "RAY_gcs_server_port_wait_time_s"
    if name in os.environ:
        yield int(os.environ[name]) if os.environ[name].isdigit() else 30
        return
    if attempt == 1:
        yield 30
        return
    os.environ[name] = str(RETRY_GCS_WAIT_S)
    try:
        yield RETRY_GCS_WAIT_S
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def _stderr_quiet() -> Iterator[None]:
    """Discard what Ray's C++ core writes to file descriptor 2 meanwhile (its start-up notices;
    what goes wrong reaches the caller as the exception)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_ray_loggers() -> None:
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _auth_settings() -> dict[str, str]:
    """Ray (2.60) guards a new local cluster with a token; the helper's cluster gets a fresh
    one that this process's driver presents (a token or mode the user set is kept)."""
    if "RAY_AUTH_MODE" in os.environ:
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in this process's environment (and Ray's cached view of its auth
    settings refreshed), put back as they were afterwards."""
    if not values:
        yield
        return
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _refresh_ray_auth()
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _refresh_ray_auth()


def _refresh_ray_auth() -> None:
    """Ray caches its configuration and token when first imported; Ray's own token set-up
    refreshes both this way after changing the environment (Ray 2.60; a no-op elsewhere)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # another Ray version: nothing cached this way
        pass


def main(argv: list[str]) -> int:
    """The helper: start a local Ray, print its address, run until stdin closes."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    cpus = int(argv[0])
    import ray

    _quiet_ray_loggers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # "local": always a new Ray of its own, never a `ray start` cluster of this
            # machine nor RAY_ADDRESS's, which refuse num_cpus
            context = ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                               log_to_driver=False,
                               logging_level=logging.ERROR, configure_logging=True)
    except Exception as exc:  # Ray's own start-up errors, passed on as one line
        print(f"{FAILED}{type(exc).__name__}: {_one_line(exc)}", flush=True)
        return 1
    print(READY + context.address_info["gcs_address"], flush=True)  # type: ignore[attr-defined]
    try:
        sys.stdin.buffer.read()  # until the caller closes the pipe or dies
    except KeyboardInterrupt:  # Ctrl-C to the caller's process group
        pass
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
