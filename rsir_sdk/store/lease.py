"""One writer per server collection: a lease recorded in the collection's properties.

Why: ``rsir index`` checks which ids a collection holds and then *inserts* the others (half the
server's work of an upsert). Two runs over one archive at once both found the ids absent and
stored every row twice: counts doubled, ``get`` lost items, and each plain re-run added more
(probe of 2026-12-07 on a Milvus 2.3.5 server). A Milvus Lite file admits one process already
(:mod:`.lite`); a server needs this.

The lease is the property ``rsir.writer`` of the collection: ``{"owner", "host", "pid",
"beat"}`` (``beat``: epoch seconds). A writer takes it when no live lease is there (one whose
beat is older than :data:`LEASE_S` and does not move for a beat more of this machine's time,
or whose process on this machine and in this pid namespace is gone, belongs to a run that
died, and is taken over), waits
:data:`SETTLE_S` and reads it back: of two runs that wrote it at nearly the same moment the
later write stands and the other refuses. The holder renews the beat every :data:`BEAT_S`
from a daemon thread; if it finds another owner there (it stalled past the lease and was taken
over), its next write refuses, so the two never write together for long. Released at the end
of the run (the property emptied). Milvus has no compare-and-set: this guards against the
mistake of two runs started together, not against a hostile writer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import StoreError

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore

log = logging.getLogger(__name__)

#: the collection property that holds the lease
LEASE_KEY = "rsir.writer"
#: seconds after its last beat that a lease counts as its writer's death
LEASE_S = 60.0
#: seconds between the holder's beats
BEAT_S = 15.0
#: seconds between writing a lease and reading it back
SETTLE_S = 1.0


def _machine() -> str:
    """This process's machine and process namespace: the host name, the kernel's boot id and
    the pid namespace (two containers, or cloned machines, can share a host name; a pid means
    something only in its own namespace)."""
    parts = [socket.gethostname()]
    for path, read in (("/proc/sys/kernel/random/boot_id", True), ("/proc/self/ns/pid", False)):
        try:
            if read:
                with open(path, encoding="ascii") as fh:
                    parts.append(fh.read().strip())
            else:
                parts.append(os.readlink(path))
        except OSError:
            parts.append("?")
    return " ".join(parts)


def _beat_of(held: dict[str, Any]) -> float:
    try:
        return float(held.get("beat", 0))
    except (TypeError, ValueError):  # a property edited by hand: as good as no beat
        return 0.0


def _died_here(held: dict[str, Any]) -> bool:
    """Whether the lease's writer ran on this machine, in this pid namespace, and its process
    is gone: a run killed here (kill -9, a crash) is re-run at once, not after
    :data:`LEASE_S` seconds."""
    if held.get("machine") != _machine() or "?" in str(held.get("machine")):
        return False
    try:
        os.kill(int(held.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, TypeError):  # EPERM: it runs, as another user
        return False
    return False


class WriterLease:
    """This run's lease on a server collection (see the module); :meth:`take` it, then
    :meth:`check` before each write and :meth:`release` at the end."""

    def __init__(self, store: "MilvusCodeStore"):
        self.store = store
        self.owner = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self) -> "WriterLease":
        """Hold the lease, or raise :class:`StoreError` naming the writer that holds it."""
        held = self._read()
        if held and held.get("owner") != self.owner and not _died_here(held):
            age = time.time() - _beat_of(held)
            if age < LEASE_S:
                raise self._busy(held, age)
            # silent by this machine's clock: watch it for a beat of our own time before
            # taking it over (another machine's clock may run behind)
            time.sleep(BEAT_S + 2.0)
            again = self._read()
            if again and again.get("owner") != self.owner and _beat_of(again) != _beat_of(held):
                raise self._busy(again, 0.0)
            log.info("collection %s: taking over the writer lease of %s pid %s (a run that "
                     "died)", self.store.collection, held.get("host"), held.get("pid"))
        try:
            self._write()
            time.sleep(SETTLE_S)
            held = self._read()
            if not held or held.get("owner") != self.owner:
                raise self._busy(held or {}, 0.0)
            self._thread = threading.Thread(target=self._beat, name="rsir-writer-lease",
                                            daemon=True)
            self._thread.start()
        except BaseException:  # Ctrl-C while taking it: leave no lease behind
            self.release()
            raise
        return self

    def check(self) -> None:
        """Refuse to write once another writer holds the lease."""
        if self.lost:
            raise StoreError(
                f"collection {self.store.collection!r}: another rsir index took over the "
                f"writer lease (this run stalled for over {LEASE_S:.0f} s): this run stops; "
                f"re-run it when the other one ends")

    def release(self) -> None:
        """Stop beating and empty the lease (if it is still this run's)."""
        self._stop.set()
        try:
            with self._writing:  # a beat in flight finishes first; none starts after
                held = self._read()
                if held and held.get("owner") == self.owner:
                    self._conn_call({LEASE_KEY: ""}, "releasing the writer lease")
        except StoreError as exc:  # the run's own outcome matters more; the lease expires
            log.info("could not release the writer lease of %s: %s", self.store.collection, exc)

    # ----------------------------------------------------------------- internals
    def _beat(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                with self._writing:
                    if self._stop.is_set():
                        return
                    held = self._read()
                    if held and held.get("owner") != self.owner:
                        self.lost = True
                        return
                    self._write()
            except StoreError as exc:  # a server hiccup: the next beat tries again
                log.info("writer lease beat of %s failed: %s", self.store.collection, exc)

    def _read(self) -> dict[str, Any]:
        desc = self.store._conn.call("describe_collection", self.store.collection,
                                     what=f"reading the writer lease of {self.store.collection!r}")
        raw = (desc.get("properties") or {}).get(LEASE_KEY) or ""
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            value = {}
        return value if isinstance(value, dict) else {}

    def _write(self) -> None:
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                  "machine": _machine(), "beat": time.time()}
        self._conn_call({LEASE_KEY: json.dumps(record)}, "taking the writer lease")

    def _conn_call(self, props: dict[str, str], what: str) -> None:
        self.store._conn.call("alter_collection_properties", self.store.collection,
                              properties=props, what=f"{what} of {self.store.collection!r}")

    def _busy(self, held: dict[str, Any], age: float) -> StoreError:
        who = f"{held.get('host', '?')} pid {held.get('pid', '?')}"
        return StoreError(
            f"collection {self.store.collection!r} at {self.store.display_uri} is being written "
            f"by another rsir index ({who}, alive {age:.0f} s ago): one writer at a time (two "
            f"at once stored every row twice); wait for it to end, or run again "
            f"{LEASE_S:.0f} s after it died")
