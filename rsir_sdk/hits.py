"""What a search returns and what a read returns, and their one JSON shape.

:class:`Hit` (one search result) and :class:`StoredItem` (one stored row) are plain frozen
dataclasses shared by every layer: the store makes them, :class:`~rsir_sdk.Retriever` and
:class:`~rsir_sdk.RemoteRetriever` return them, and the HTTP service, ``rsir search --json`` and
the gallery write them with :func:`hit_to_json` / :func:`item_to_json`, so the JSON a user sees
has one shape everywhere and the remote client reads it back with :func:`hit_from_json` /
:func:`item_from_json` into the very same classes.

>>> h = Hit(id="Forest/1.jpg", distance=3, label="Forest")
>>> hit_from_json(hit_to_json(h)) == h
True
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["SEARCH_MODES", "Hit", "StoredItem", "hit_from_json", "hit_to_json", "item_from_json", "item_to_json"]


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the item's id and its Hamming distance (an int), plus stored fields
    (empty when the search did not ask for them). Results are sorted by distance (the query's
    near-duplicates first, ties by the fine code where the collection keeps fine codes), then
    by the digest of the id (:func:`rsir_sdk.store.tie_order`). Hashable (``set(hits)``). ``footprint`` ``(west, south, east,
    north)`` (WGS84 degrees; ``west > east`` across the antimeridian) and ``time`` (ISO 8601
    UTC) are the item's place and period when its collection holds them (docs/geo.md)."""

    id: str
    distance: int
    label: str = ""
    path: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    footprint: tuple[float, float, float, float] | None = None
    time: str | None = None
    #: Hamming distance of the fine codes (issue 20) when they took part in the ranking: the
    #: second key of the default ranking, the only one of the appearance mode (where
    #: ``distance`` is this same figure); ``None`` when the search did not use fine codes
    fine_distance: int | None = None

    def to_json(self) -> dict[str, Any]:
        """This hit as a JSON object (:func:`hit_to_json`): ``json.dumps(hit.to_json())``."""
        return hit_to_json(self)

    def __hash__(self) -> int:
        """Hits go in sets and dict keys (``set(hits)`` raised "unhashable type: 'dict'"): the
        hash leaves ``metadata`` out, which equal hits share anyway."""
        return hash((self.id, self.distance, self.label, self.path, self.footprint, self.time,
                     self.fine_distance))


#: the search modes: ``"default"`` ranks by retrieval-code distance, then fine-code distance
#: (when both sides have fine codes; near-duplicates, fine distance within
#: :func:`rsir_sdk.codes.near_duplicate_radius` or clearly the nearest by the ratio test of
#: :func:`rsir_sdk.codes.ratio_leader`, come first whatever their retrieval distance),
#: then the digest of the id; ``"appearance"`` ranks by the fine code alone (near-duplicates,
#: the same place seen again, archives without labels)
SEARCH_MODES = ("default", "appearance")


@dataclass(frozen=True)
class StoredItem:
    """One stored row as ``get`` returns it: id, packed code ``uint8 (bits/8,)``, label, path,
    metadata, and its place and period as a :class:`Hit` has them (``footprint`` ``(west,
    south, east, north)`` or ``None``, ``time`` ISO 8601 or ``None``). Items compare equal when
    every field, the code's bytes included, is equal."""

    id: str
    code: np.ndarray
    label: str
    path: str
    metadata: dict[str, Any]
    footprint: tuple[float, float, float, float] | None = None
    time: str | None = None

    def __eq__(self, other: object) -> bool:
        # the dataclass' own == compared the code arrays with ==, and raised on their truth
        if not isinstance(other, StoredItem):
            return NotImplemented
        return ((self.id, self.label, self.path, self.metadata, self.footprint, self.time)
                == (other.id, other.label, other.path, other.metadata, other.footprint,
                    other.time) and np.array_equal(self.code, other.code))

    __hash__ = None  # type: ignore[assignment]  # mutable metadata: not a set member

    def to_json(self) -> dict[str, Any]:
        """This item as a JSON object, its code as base64 (:func:`item_to_json`); the
        dataclass' ``asdict`` keeps the code as a numpy array, which ``json`` cannot write."""
        return item_to_json(self)


def hit_to_json(hit: Hit) -> dict[str, Any]:
    """A hit as a JSON object: ``{"id", "distance", "label", "path", "metadata", "footprint",
    "time"}`` (``footprint`` ``[w, s, e, n]`` or ``null``, ``time`` ISO 8601 or ``null``), and
    ``"fine_distance"`` when the fine code took part."""
    out = {"id": hit.id, "distance": int(hit.distance), "label": hit.label, "path": hit.path,
           "metadata": hit.metadata,
           "footprint": None if hit.footprint is None else [float(v) for v in hit.footprint],
           "time": hit.time}
    if hit.fine_distance is not None:
        out["fine_distance"] = int(hit.fine_distance)
    return out


def hit_from_json(obj: Mapping[str, Any]) -> Hit:
    """The :class:`Hit` that :func:`hit_to_json` wrote."""
    fp = obj.get("footprint")
    return Hit(id=str(obj["id"]), distance=int(obj["distance"]), label=obj.get("label") or "",
               path=obj.get("path") or "", metadata=dict(obj.get("metadata") or {}),
               footprint=None if fp is None else tuple(float(v) for v in fp),  # type: ignore[arg-type]
               time=None if obj.get("time") is None else str(obj["time"]),
               fine_distance=None if obj.get("fine_distance") is None
               else int(obj["fine_distance"]))


def item_to_json(item: StoredItem) -> dict[str, Any]:
    """A stored item as a JSON object, its code as base64 of the packed bytes (``footprint``
    ``[w, s, e, n]`` or ``null``, ``time`` ISO 8601 or ``null``, as :func:`hit_to_json`)."""
    return {"id": item.id, "code": base64.b64encode(bytes(item.code)).decode("ascii"),
            "label": item.label, "path": item.path, "metadata": item.metadata,
            "footprint": None if item.footprint is None else [float(v) for v in item.footprint],
            "time": item.time}


def item_from_json(obj: Mapping[str, Any]) -> StoredItem:
    """The :class:`StoredItem` that :func:`item_to_json` wrote."""
    code = np.frombuffer(base64.b64decode(obj["code"]), dtype=np.uint8).copy()
    fp = obj.get("footprint")
    return StoredItem(id=str(obj["id"]), code=code, label=obj.get("label") or "",
                      path=obj.get("path") or "", metadata=dict(obj.get("metadata") or {}),
                      footprint=None if fp is None else tuple(float(v) for v in fp),  # type: ignore[arg-type]
                      time=None if obj.get("time") is None else str(obj["time"]))
