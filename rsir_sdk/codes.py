"""Binary hash codes as packed ``uint8`` arrays: packing, validation, exact Hamming search.

Codes travel through the SDK as ``numpy.uint8`` arrays of shape ``(n, bits // 8)``, packed
big-endian (``numpy.packbits`` order: bit ``k`` lives in byte ``k // 8`` at value
``128 >> (k % 8)``). These are the bytes Milvus stores in a ``BINARY_VECTOR`` field, so the
numpy functions here are the reference the Milvus store is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import CodeLengthError

MIN_BITS = 8
MAX_BITS = 32768

# popcount of every byte value, used for exact Hamming distances
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def validate_bits(bits: int) -> int:
    """Return ``bits`` if it is a legal code length (a multiple of 8 in 8..32768), else raise.

    >>> validate_bits(64)
    64
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise CodeLengthError(f"bits must be an integer, got {bits!r}")
    bits = int(bits)
    if bits < MIN_BITS or bits > MAX_BITS or bits % 8:
        raise CodeLengthError(
            f"bits must be a multiple of 8 between {MIN_BITS} and {MAX_BITS}, got {bits}"
        )
    return bits


def pack_codes(bits_array: np.ndarray) -> np.ndarray:
    """Pack ``(n, bits)`` codes given as ±1, 0/1 or booleans into ``uint8 (n, bits/8)``.

    Positive values (``+1``, ``1``, ``True``) become 1-bits; ``-1``/``0``/``False`` 0-bits.

    >>> pack_codes(np.array([[1, -1, 1, -1, 1, 1, 1, 1]]))
    array([[175]], dtype=uint8)
    """
    arr = np.asarray(bits_array)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise CodeLengthError(f"codes must be 2-D (n, bits), got shape {arr.shape}")
    validate_bits(arr.shape[1])
    if arr.dtype != bool:
        values = np.unique(arr)
        if not (np.isin(values, (-1, 1)).all() or np.isin(values, (0, 1)).all()):
            raise ValueError("codes to pack must hold only ±1 or only 0/1 values")
        arr = arr > 0
    return np.packbits(arr, axis=1, bitorder="big")


def unpack_codes(packed: np.ndarray, bits: int | None = None, signed: bool = False) -> np.ndarray:
    """Unpack ``uint8 (n, bits/8)`` codes to ``(n, bits)`` of 0/1 (or ±1 when ``signed``).

    >>> unpack_codes(np.array([[175]], dtype=np.uint8), signed=True)
    array([[ 1, -1,  1, -1,  1,  1,  1,  1]], dtype=int8)
    """
    packed = as_packed(packed, bits)
    out = np.unpackbits(packed, axis=1, bitorder="big").astype(np.int8)
    return out * 2 - 1 if signed else out


def as_packed(codes, bits: int | None = None, what: str = "codes") -> np.ndarray:
    """Return ``codes`` as a C-contiguous ``uint8 (n, bits/8)`` array, checking its length.

    Accepts one code (1-D array or ``bytes``), a list of ``bytes`` or a 2-D ``uint8`` array.
    Raises :class:`CodeLengthError` when the byte length does not match ``bits``, naming the
    codes as ``what`` ("fine codes" for those).
    """
    if isinstance(codes, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(bytes(codes), dtype=np.uint8)[None, :]
    elif isinstance(codes, (list, tuple)) and codes and isinstance(codes[0], (bytes, bytearray)):
        lengths = {len(c) for c in codes}
        if len(lengths) != 1:
            raise CodeLengthError(f"codes have different byte lengths: {sorted(lengths)}")
        arr = np.frombuffer(b"".join(bytes(c) for c in codes), dtype=np.uint8).reshape(
            len(codes), -1
        )
    else:
        arr = np.asarray(codes)
        if arr.dtype != np.uint8:
            raise CodeLengthError(
                f"packed codes must be uint8 (use pack_codes for ±1/0-1 bits), got {arr.dtype}"
            )
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise CodeLengthError(f"packed codes must be 2-D (n, bytes), got shape {arr.shape}")
    if bits is not None:
        validate_bits(bits)
        if arr.shape[1] * 8 != bits:
            raise CodeLengthError(
                f"{what} are {arr.shape[1] * 8} bits ({arr.shape[1]} bytes) but {bits} bits "
                f"were expected"
            )
    else:
        validate_bits(arr.shape[1] * 8)
    return np.ascontiguousarray(arr)


def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Exact Hamming distances ``int32 (n_queries, n_database)`` between packed codes.

    >>> a = pack_codes(np.array([[1, 1, 1, 1, 1, 1, 1, 1]]))
    >>> b = pack_codes(np.array([[1, 1, 1, 1, -1, -1, -1, -1]]))
    >>> hamming_distances(a, b)
    array([[4]], dtype=int32)
    """
    q = as_packed(queries)
    db = as_packed(database, q.shape[1] * 8)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    # compare whole 64-bit words when the length allows (8x fewer elements), else bytes
    if q.shape[1] % 8 == 0:
        q, db = q.view(np.uint64), db.view(np.uint64)
    count = np.bitwise_count if hasattr(np, "bitwise_count") else _popcount_bytes
    # chunk over queries so the (q, n, words) xor never grows past ~64 MB
    step = max(1, (64 << 20) // max(1, db.nbytes))
    for start in range(0, q.shape[0], step):
        x = np.bitwise_xor(q[start : start + step, None, :], db[None, :, :])
        out[start : start + step] = count(x).sum(axis=2, dtype=np.int32)
    return out


#: the near-duplicate radius (inclusive, in bits of a 128-bit fine code; scaled to other lengths
#: by :func:`near_duplicate_radius`): two images whose fine codes lie this close are the same
#: scene (a re-encode, a crop, a brightened copy). Measured by benchmarks/similar.py
#: (docs/similar.md, "The duplicates radius"): 12 keeps 0.97-0.98 of JPEG q70 and brightened
#: copies with their original on nwpu12 and joins one distinct pair in 500 images.
NEAR_DUPLICATE_RADIUS = 12


def near_duplicate_radius(fine_bits: int) -> int:
    """:data:`NEAR_DUPLICATE_RADIUS` scaled to a fine code of ``fine_bits`` bits.

    >>> near_duplicate_radius(128), near_duplicate_radius(256)
    (12, 24)
    """
    return max(0, round(NEAR_DUPLICATE_RADIUS * fine_bits / 128))


#: Lowe's ratio test on the fine code: the nearest item by fine distance also counts as the same
#: scene when it is clearly nearer than the runner-up (``d1 < NEAR_RATIO * d2``), however far it
#: is in bits. Why: a JPEG re-encode or a crop of a small (64 x 64) scene moves its fine code
#: further than the radius, yet still far less than any other image (docs/similar.md, "The
#: default fine code (split) and the ratio test"). Set to 0 to turn the test off.
NEAR_RATIO = 0.8


def ratio_leader(fine_dist: np.ndarray, ratio: float | None = None) -> np.ndarray:
    """Per row of ``fine_dist`` (``(n,)`` or ``(q, n)``), a mask of the item that passes the
    ratio test: the unique nearest, strictly below ``ratio`` times the second-nearest distance.
    All False for rows of fewer than two items.

    >>> ratio_leader(np.array([30, 50, 60])).tolist(), ratio_leader(np.array([45, 50, 60])).tolist()
    ([True, False, False], [False, False, False])
    """
    d = np.asarray(fine_dist, dtype=np.int64)
    rows = d.reshape(-1, d.shape[-1]) if d.ndim else d.reshape(1, 1)
    mask = np.zeros(rows.shape, dtype=bool)
    ratio = NEAR_RATIO if ratio is None else ratio
    if rows.shape[1] >= 2 and ratio > 0:
        two = np.partition(rows, 1, axis=1)[:, :2]
        nearest = rows.argmin(axis=1)
        fires = two[:, 0] < ratio * two[:, 1]
        mask[np.arange(len(rows))[fires], nearest[fires]] = True
    return mask.reshape(d.shape)


#: how many of a query's nearest items by fine distance a :class:`SceneTest` reads: the store
#: fetches them with their fine codes in the request that finds the near-duplicates
SCENE_TEST_CANDIDATES = 10


class SceneTest:
    """Which parts of a fine code the same-scene tests read, and with what weights.

    Why: a fine code can hold parts of two roles (``--fine-code layout``, docs/similar.md): the
    pooled features order a class by content, while thumbnails and a colour layout tell whether
    an item is *the same scene* re-encoded or turned. Each test is a ratio test
    (:func:`ratio_leader`) on a weighted sum of part distances (:meth:`distances`) among the
    query's :data:`SCENE_TEST_CANDIDATES` nearest items by the whole fine code; an item that
    passes any of them is a near-duplicate. ``layout`` has two: ``t8 + 3 cl + t16r`` (JPEG
    copies of small flat scenes: 0.952 against 0.922 on eurosat) and ``t16r`` alone (the only
    rotation-invariant part: a turned copy). ``tests``: per test, ``(first byte, end byte,
    weight)`` of each part it reads (weights are small non-negative integers); ``ratios``: per
    test its factor (default :data:`NEAR_RATIO`; ``layout``'s rotation test takes 0.6).

    >>> t = SceneTest.from_parts([{"bits": 8, "test_weight": [0, 1]}, {"bits": 8, "test_weight": 3}])
    >>> t.tests, t.distances(np.array([[0, 0]], np.uint8), np.array([[255, 1]], np.uint8)).tolist()
    ((((1, 2, 3),), ((0, 1, 1),)), [[[3]], [[8]]])
    """

    def __init__(self, tests: Any, ratios: Any = None):
        self.tests = tuple(tuple((int(a), int(b), int(w)) for a, b, w in parts if int(w))
                           for parts in tests)
        if not self.tests or not all(self.tests):
            raise ValueError("each scene test needs a part of positive weight")
        self.ratios = tuple(float(r) for r in ratios) if ratios is not None else None
        if self.ratios is not None and (len(self.ratios) != len(self.tests)
                                        or not all(0 < r < 1 for r in self.ratios)):
            raise ValueError(f"one ratio in (0, 1) per scene test, got {ratios!r}")

    @classmethod
    def from_parts(cls, parts: Any, ratios: Any = None) -> "SceneTest | None":
        """The tests of a manifest's ``fine_code.parts`` (``bits`` and ``test_weight`` each, in
        bit order; ``test_weight`` a weight, or a list of one weight per test) and its
        ``fine_code.test_ratios``; ``None`` when no part has a ``test_weight`` (the whole code
        is tested)."""
        if not isinstance(parts, list) or not any(
                isinstance(p, dict) and "test_weight" in p for p in parts):
            return None
        weights = [p.get("test_weight", 0) for p in parts]
        weights = [w if isinstance(w, list) else [w] for w in weights]
        n_tests = max(len(w) for w in weights)
        tests: list[list[tuple[int, int, int]]] = [[] for _ in range(n_tests)]
        at = 0
        for p, ws in zip(parts, weights):
            bits = int(p["bits"])
            if bits % 8 or not all(type(w) is int and w >= 0 for w in ws):
                raise ValueError(f"a fine code part must be whole bytes with integer weights "
                                 f">= 0, got {p!r}")
            ws = list(ws) + [0] * (n_tests - len(ws))
            for test, w in zip(tests, ws):
                test.append((at // 8, (at + bits) // 8, w))
            at += bits
        return cls(tests, ratios)

    def to_json(self) -> dict[str, Any]:
        """``{"tests": per test [[first byte, end byte, weight], ...], "ratios": [...] or
        null}``: what a collection records."""
        return {"tests": [[list(p) for p in parts] for parts in self.tests],
                "ratios": None if self.ratios is None else list(self.ratios)}

    @classmethod
    def from_json(cls, value: Any) -> "SceneTest":
        """What :meth:`to_json` wrote; also the forms collections recorded before ratios
        (a list of tests) and before several tests (one test's list of parts)."""
        if isinstance(value, dict):
            tests, ratios = value["tests"], value.get("ratios")
        else:
            one = bool(value) and all(isinstance(x, (int, float)) for x in value[0])
            tests, ratios = ([value] if one else value), None
        return cls(tuple(tuple(tuple(int(x) for x in p) for p in parts) for parts in tests),
                   ratios)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SceneTest) and self.tests == other.tests
                and self.ratios == other.ratios)

    def __repr__(self) -> str:
        return f"SceneTest({self.tests!r}, ratios={self.ratios!r})"

    def leader(self, test_dist: np.ndarray, fine_dist: np.ndarray,
               candidates: int = SCENE_TEST_CANDIDATES) -> np.ndarray:
        """:func:`scene_leader` with this test's ratios."""
        return scene_leader(test_dist, fine_dist, candidates, self.ratios)

    def leaders(self, queries: np.ndarray, database: np.ndarray,
                fine_dist: np.ndarray) -> np.ndarray:
        """The items that pass a test, ``bool`` shaped as ``fine_dist`` (the queries' whole
        fine-code distances to ``database``): :meth:`distances`, then :meth:`leader`."""
        return self.leader(self.distances(queries, database), fine_dist)

    def distances(self, queries: np.ndarray, database: np.ndarray) -> np.ndarray:
        """``int32 (n_tests, n_queries, n_database)``: per test, the weighted sum of its parts'
        Hamming distances."""
        q, db = np.asarray(queries, np.uint8), np.asarray(database, np.uint8)
        out = np.zeros((len(self.tests), q.shape[0], db.shape[0]), np.int32)
        for t, parts in enumerate(self.tests):
            for a, b, w in parts:
                out[t] += w * hamming_distances(np.ascontiguousarray(q[:, a:b]),
                                                np.ascontiguousarray(db[:, a:b]))
        return out


def scene_leader(test_dist: np.ndarray, fine_dist: np.ndarray,
                 candidates: int = SCENE_TEST_CANDIDATES,
                 ratios: tuple[float, ...] | None = None) -> np.ndarray:
    """The items that pass any test of a :class:`SceneTest`: :func:`ratio_leader` on each
    test's distances (``test_dist``: ``(n_tests, *fine_dist.shape)``, or one test's, shaped as
    ``fine_dist``) read only over each row's ``candidates`` nearest items by ``fine_dist`` (ties
    in the row's order, which is the store's tie order where the store's rule is reproduced):
    what the store's one request for the nearest items by fine code can see. ``ratios``: per
    test its factor (default :data:`NEAR_RATIO` for each).

    >>> scene_leader(np.array([9, 2, 1]), np.array([1, 2, 3]), 2).tolist()
    [False, True, False]
    >>> scene_leader(np.array([[9, 2, 1], [1, 9, 9]]), np.array([1, 2, 3]), 2).tolist()
    [True, True, False]
    """
    f = np.asarray(fine_dist, dtype=np.int64)
    t = np.asarray(test_dist, dtype=np.int64)
    tests = t if t.ndim == f.ndim + 1 else t[None]
    rows_f = f.reshape(-1, f.shape[-1])
    first = np.argsort(rows_f, axis=1, kind="stable")[:, :candidates]
    mask = np.zeros(rows_f.shape, dtype=bool)
    for i, one in enumerate(tests):
        rows = one.reshape(-1, f.shape[-1])
        far = np.full(rows.shape, np.iinfo(np.int64).max // 4)
        np.put_along_axis(far, first, np.take_along_axis(rows, first, axis=1), axis=1)
        mask |= ratio_leader(far, None if ratios is None else ratios[i])
    return mask.reshape(f.shape)


def fine_ranking_key(dist: np.ndarray, fine_dist: np.ndarray, fine_bits: int,
                     leader: np.ndarray | None = None) -> np.ndarray:
    """The sort key (``int64``, same shape) of the store's default ranking with fine codes.

    Near-duplicates come first, by fine distance: items whose fine distance is at most
    :func:`near_duplicate_radius`, and the item that passes :func:`ratio_leader` (the nearest
    by fine distance when it is clearly nearer than any other; computed over the row, i.e. over
    the items the search considers). Why: the same scene re-encoded, cropped or stored as AHCL's
    learned code (which need not equal the network's code for that image) may sit a few
    retrieval bits away from the query while a whole class ties at a smaller distance; the user
    expects it first. Every other item follows by (retrieval distance, fine distance).
    A stable sort on this key over items in the store's tie order (:func:`~rsir_sdk.store.tie_order`)
    is the store's order. ``leader`` (a bundle's :class:`SceneTest`: its
    :meth:`~SceneTest.leaders`, same shape) takes the place of the whole code's ratio test.

    >>> fine_ranking_key(np.array([0, 3, 0]), np.array([40, 2, 30]), 128).argsort().tolist()
    [1, 2, 0]
    >>> fine_ranking_key(np.array([0, 3, 0]), np.array([70, 20, 60]), 128).argsort().tolist()
    [1, 2, 0]
    """
    span = np.int64(fine_bits + 1)
    fine_dist = np.asarray(fine_dist, dtype=np.int64)
    key = np.asarray(dist, dtype=np.int64) * span + fine_dist
    if leader is None:
        leader = ratio_leader(fine_dist)
    near = (fine_dist <= near_duplicate_radius(fine_bits)) | leader
    return np.where(near, fine_dist - span, key)


def _popcount_bytes(x: np.ndarray) -> np.ndarray:
    """Per-element popcount for numpy < 2.0 (no ``np.bitwise_count``)."""
    return _POPCOUNT[x.view(np.uint8)].reshape(*x.shape, x.itemsize).sum(axis=-1)


def topk_bruteforce(
    queries: np.ndarray, database: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-``k``: ``(indices, distances)``, each ``(n_queries, min(k, n))``.

    Ties are broken by the lower database index first, so the result is deterministic.

    >>> db = pack_codes(np.array([[1] * 8, [-1] * 8, [1] * 8]))
    >>> topk_bruteforce(db[:1], db, 2)
    (array([[0, 2]]), array([[0, 0]], dtype=int32))
    """
    dist = hamming_distances(queries, database)
    k = min(int(k), dist.shape[1])
    # stable sort on distance keeps database order among equal distances
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def within_radius(queries: np.ndarray, database: np.ndarray, radius: int) -> list[np.ndarray]:
    """Indices of database codes at Hamming distance ``<= radius`` (inclusive) per query."""
    dist = hamming_distances(queries, database)
    return [np.flatnonzero(row <= radius) for row in dist]
