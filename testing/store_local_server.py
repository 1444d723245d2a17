"""A Milvus server on this machine, for development, tests and benchmarks (not for production).

The PyPI package ``milvus`` (2.3.5, "milvus-lite" of the 2.3 series: the real standalone server
with embedded etcd and local storage, no Docker) runs the same server code as a deployment, so
the server path of rsir-sdk (indexes, bulk import, prepare-for-search) can be tried and tested
on one machine:

>>> from testing.store_local_server import local_server
>>> with local_server("/tmp/milvus-dev") as server:                   # doctest: +SKIP
...     store = MilvusCodeStore(server.uri, "scenes", bits=64)

What this changes from the package's defaults: etcd, the proxy, every other component and the
health/metrics endpoint get free ports chosen at random below the ephemeral range (where no
client socket can take them first), one server choosing and binding at a time (a lock file),
and the components advertise 127.0.0.1. The package would start etcd on 127.0.0.1:2379/2380
always, and the components on ports scanned upwards from fixed ones (53100, 19531, 21123,
...): two servers starting at the same moment took the same ports and one of them died. The components still listen on every
interface: a trusted machine only. ``quick_handoff`` makes the query coordinator hand
sealed segments over every second instead of every 5-10 s (tests wait for that hand-over), and
a flush return in about 1 s instead of 2.5 s (write assignments expire after 0.5 s, not 2 s).
Stopping takes about a second; the data folder is removed afterwards unless ``keep=True``.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from rsir_sdk import staging
from rsir_sdk.errors import StoreError

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord",
              "dataNode")


#: the ports servers are given: below Linux's ephemeral range (32768-60999), which every
#: outgoing connection draws from: a kernel-chosen free port was taken by a client socket of
#: the other server before its own component bound it ("bind: address already in use")
PORTS = range(20000, 32000)


#: ports handed out in the last hour, by any process (read and written under
#: :func:`starting_alone`): a port chosen twice, for two components of one server or for two
#: servers before the first bound it, failed the package's check ("set data_coord_port=26996,
#: but bind failed": one CI run in a few)
GIVEN = Path(tempfile.gettempdir()) / "rsir-local-server-ports"
GIVEN_FOR_S = 3600.0


def free_port() -> int:
    """A TCP port, outside the ephemeral range, that no socket holds on any interface now and
    that was not handed out in the last hour (:data:`GIVEN`)."""
    rng = random.SystemRandom()
    given = _recently_given()
    for _ in range(200):
        port = rng.choice(PORTS)
        if port in given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        with open(GIVEN, "a") as fh:
            fh.write(f"{port} {time.time():.0f}\n")
        return port
    raise StoreError(f"no free port between {PORTS.start} and {PORTS.stop}")


def _recently_given() -> set[int]:
    try:
        lines = GIVEN.read_text().split("\n")
    except OSError:
        return set()
    now, out = time.time(), set()
    for line in lines:
        port, _, when = line.partition(" ")
        if port.isdigit() and when.isdigit() and now - int(when) < GIVEN_FOR_S:
            out.add(int(port))
    if len(lines) > 5000:  # keep the file short
        GIVEN.write_text("".join(f"{p} {now:.0f}\n" for p in sorted(out)))
    return out


@contextlib.contextmanager
def starting_alone() -> Iterator[None]:
    """Held while a server chooses its ports and binds them: a second server starting at the
    same moment (another test run, a benchmark) waits, so no two choose the same free port
    before either binds it."""
    with staging.locked(Path(tempfile.gettempdir()) / "rsir-local-server-start.lock"):
        yield


def server_config(data_dir: str | Path, *, quick_handoff: bool = False,
                  settings: dict[str, Any] | None = None) -> Any:
    """A ``milvus.MilvusServerConfig`` for ``data_dir``: etcd and every component on free ports,
    advertising 127.0.0.1; ``settings``: more ``component.key`` values the package's template names."""
    try:
        import milvus
        from milvus import MilvusServerConfig
    except ImportError:
        raise StoreError("a local Milvus server needs the PyPI package milvus (pip install "
                         "'milvus==2.3.5')") from None
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    package = Path(milvus.__file__).parent / "data"
    client_port, peer_port = free_port(), free_port()
    etcd_yaml = data / "embedEtcd.yaml"
    etcd_yaml.write_text(
        "name: default\n"
        f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer_port}\n"
        f"listen-client-urls: http://127.0.0.1:{client_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{client_port}\n")
    template = (package / "config.yaml.template").read_text()
    marker = "  use:\n    embed: true"
    if marker not in template:
        raise StoreError("the milvus package's config template is not the 2.3.5 one")
    template = template.replace(marker, f"  config:\n    path: {etcd_yaml}\n{marker}", 1)
    if quick_handoff:
        template = template.replace("  checkHandoffInterval: 5000",
                                    "  checkHandoffInterval: 1000\n  updateNextTargetInterval: 1", 1)
        # a flush waits for the segments' write assignments to expire: 2 s by default
        template = template.replace("    assignmentExpiration: 2000", "    assignmentExpiration: 500", 1)
    mine = data / "config.yaml.template"
    mine.write_text(template)
    config = MilvusServerConfig(data_dir=str(data), template=str(mine), etcd_port=client_port)
    for key in config.configurable_items:
        if key.endswith("_port") and key != "etcd_port":
            config.update(**{key: free_port()})
    config.glog_conf_file = str(package / "glog.conf")  # the package sets it only without a template
    for component in COMPONENTS:
        config.set(f"{component}.ip", "127.0.0.1")
    for key, value in (settings or {}).items():
        config.set(key, value)
    return config


class LocalServer(NamedTuple):
    """A running local server: its uri, process id, data folder and start-up seconds."""

    uri: str
    pid: int
    data_dir: Path
    started_s: float


@contextlib.contextmanager
def local_server(data_dir: str | Path, *, quick_handoff: bool = False, keep: bool = False,
                 settings: dict[str, Any] | None = None) -> Iterator[LocalServer]:
    """Start a local Milvus 2.3.5 server with its data in ``data_dir`` and yield a
    :class:`LocalServer` (``.uri`` is ``http://127.0.0.1:<port>``); stop it after, and remove
    its data unless ``keep``."""
    from milvus import MilvusServer

    t0 = time.perf_counter()
    with starting_alone():
        server = MilvusServer(server_config(data_dir, quick_handoff=quick_handoff,
                                            settings=settings))
        server.webservice_port = free_port()  # the package scans upwards from 9091 otherwise
        server.start()                         # returns once the server answers: ports bound
    try:
        yield LocalServer(f"http://127.0.0.1:{server.listen_port}", int(server.server_proc.pid),
                          Path(data_dir), time.perf_counter() - t0)
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(Path(data_dir) / "data", ignore_errors=True)
