"""The queries of ``benchmarks/similar.py`` and what is measured on them without Milvus.

Why a module of its own: drawing the database images, changing them into queries, encoding
them, and ranking them in numpy (the reference the Milvus hits are checked against, with the
float-cosine overlap@10 and the fine-code distances) is one job, shared by the benchmark and by
``export/scripts/ratio_test_sweep.py`` (through ``similar``'s names); searching Milvus and
writing the report are the others (``similar.py``, ``_similar_report.py``).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from rsir_sdk import Bundle, Encoder
from rsir_sdk.archive import open_archive
from rsir_sdk.codes import fine_ranking_key, hamming_distances
from rsir_sdk.errors import RsirError
from rsir_sdk.images import load_image
from rsir_sdk.store import tie_order

VARIANTS = ("same", "jpeg70", "crop90", "bright110", "rot90")
HEADS = {"same": "same file", "jpeg70": "JPEG q70", "crop90": "90% crop",
         "bright110": "brightness x1.1", "rot90": "rot 90 in top 10"}
RANKINGS = ("today", "default", "appearance")
CHANGED = ("jpeg70", "crop90", "bright110")
RADII = (4, 8, 10, 12, 14, 16, 20, 24, 28, 32)


def _jpeg70(rgb: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=70)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _crop90(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    ch, cw = round(h * 0.9), round(w * 0.9)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(rgb[top:top + ch, left:left + cw])
    return np.asarray(crop.resize((w, h), Image.BILINEAR), dtype=np.uint8)


def _bright110(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb.astype(np.float32) * 1.1), 0, 255).astype(np.uint8)


def _rot90(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(rgb))


#: the changed queries, as in export/scripts/fine_code_length.py (the same file is its path)
CHANGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg70": _jpeg70, "crop90": _crop90, "bright110": _bright110, "rot90": _rot90}


@dataclass
class Case:
    """One bundle's database draw, its query images and their codes."""

    bundle: Bundle
    name: str
    ids: list[str]
    labels: list[str]
    paths: list[str]
    db: Any = None  # Encoded of the database images
    queries: dict[str, Any] = field(default_factory=dict)  # variant -> Encoded
    images: dict[str, list[Any]] = field(default_factory=dict)  # variant -> query sources
    encode_s: float = 0.0
    pooled: np.ndarray | None = None  # pooled features of the database images
    #: what the collection holds, when not the encoded images: AHCL's learned rows (codes, fine)
    learned: tuple[np.ndarray, np.ndarray] | None = None

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """The retrieval and fine codes the collection holds for ``ids``."""
        return self.learned if self.learned is not None else (self.db.codes, self.db.fine)


def learned_case(case: Case) -> Case | None:
    """The same draw with AHCL's learned database rows (``database.npz``: the codes V and their
    fine codes) as the collection, as ``Retriever.add_learned_codes`` stores them; None for a
    bundle without learned rows or without their fine codes."""
    if not case.bundle.has_database:
        return None
    db = case.bundle.load_database()
    if db.fine is None:
        return None
    pos = {x: i for i, x in enumerate(db.ids)}
    rows = [pos[i] for i in case.ids]
    return replace(case, name=case.name + " learned", learned=(db.codes[rows], db.fine[rows]))


def archive_root(bundle: Bundle, data: Path | None, first_id: str) -> Path:
    """The folder holding the bundle's images: ``data`` or ``data/<dataset>``, else the archive
    the bundle records."""
    dataset = (bundle.manifest.get("training") or {}).get("dataset", "")
    cands = [data, data / dataset] if data else []
    if bundle.archive_root:
        cands.append(Path(bundle.archive_root))
    for cand in cands:
        if cand is not None and (cand / first_id).is_file():
            return cand
    raise SystemExit(f"no archive holding {first_id} for {bundle.path}: give --data the archive folder")


def draw_case(bundle: Bundle, data: Path | None, n: int, seed: int) -> Case:
    """``n`` database images drawn with ``seed`` from the bundle's database side."""
    try:
        side = list(bundle.split().train_ids)
    except (OSError, RsirError):  # no split.json: the whole archive is the database
        side = []
    root = archive_root(bundle, data, side[0]) if side else Path(bundle.archive_root or data or ".")
    listing = open_archive(root, label_from="top")
    by_id = listing.by_id()
    side = side or sorted(by_id)
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(side), size=min(n, len(side)), replace=False).tolist())
    ids = [side[i] for i in pick]
    dataset = (bundle.manifest.get("training") or {}).get("dataset") or root.name
    precision = bundle.manifest.get("precision")  # derived bundles: int8 / fp16
    name = f"{dataset}-{bundle.method}-{bundle.bits}" + (f"-{precision}" if precision else "")
    return Case(bundle, name, ids, [by_id[i].label for i in ids], [str(by_id[i].file) for i in ids])


def encode_case(case: Case, threads: int | None, log: Callable[[str], None]) -> Encoder:
    """Encode the database images and every changed copy with ``Encoder.encode_both``."""
    enc = Encoder(case.bundle, providers=["CPUExecutionProvider"], threads=threads, batch_size=32)
    if enc.fine_bits is None:
        raise SystemExit(f"{case.bundle.path} has no fine code (made before issue 20): train it again")
    t0 = time.perf_counter()
    case.db = enc.encode_both(case.paths)
    case.images["same"] = list(case.paths)
    rgbs = [load_image(p) for p in case.paths]
    for v, change in CHANGES.items():
        case.images[v] = [change(x) for x in rgbs]
    for v in VARIANTS:
        case.queries[v] = case.db if v == "same" else enc.encode_both(case.images[v])
        log(f"  {case.name}: encoded {v}")
    case.encode_s = time.perf_counter() - t0
    return enc


def pooled_features(case: Case, enc: Encoder, threads: int | None) -> np.ndarray | None:
    """The pooled features the fine code is fitted on (the input of the fine head's linear
    layer in the bundle's graph, exposed as an extra output), for the database images; None
    when the graph has no such layer. Why: the issue asks for the order inside a class to follow
    the cosine of these features, which the bundle's graph computes but does not output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(case.bundle.model_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(case.bundle.fine_output or "")
    while node is not None and node.op_type not in ("Gemm", "MatMul"):
        node = producer.get(node.input[0])
    if node is None:
        return None
    feat = node.input[0]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(feat))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    parts = [sess.run([feat], {case.bundle.input_name: np.stack([enc.prepare(p) for p in
                                                                  case.paths[s:s + 32]])})[0]
             for s in range(0, len(case.paths), 32)]
    return np.concatenate(parts).reshape(len(case.paths), -1).astype(np.float32)


# --------------------------------------------------------------------------- rankings
def digest_rank(ids: list[str]) -> np.ndarray:
    """Each id's position in the store's tie order."""
    rank = np.empty(len(ids), dtype=np.int64)
    rank[tie_order(ids)] = np.arange(len(ids))
    return rank


def ceiling(case: Case) -> dict[str, float]:
    """Per variant, the share of queries whose original is in the nearest group of retrieval
    codes (for the rotation: among the 10 nearest by retrieval distance, ties counted in): the
    most the default ranking can reach, whatever the fine code, since it keeps the retrieval
    distance first."""
    codes = case.stored()[0]
    out = {}
    for v in VARIANTS:
        d = hamming_distances(case.queries[v].codes, codes)
        own = d[np.arange(len(d)), np.arange(len(d))]
        depth = 10 if v == "rot90" else 1
        out[v] = float(np.mean((d < own[:, None]).sum(axis=1) < depth))
    return out


def memory_topk(case: Case, variant: str, ranking: str, k: int) -> list[list[str]]:
    """The top-``k`` ids of every query of ``variant`` ranked in numpy as the store ranks."""
    q = case.queries[variant]
    codes, fine = case.stored()
    d_ret = hamming_distances(q.codes, codes)
    d_fine = hamming_distances(q.fine, fine)
    tie = digest_rank(case.ids)
    in_tie = np.argsort(tie)  # the items in the store's tie order
    test = case.bundle.scene_test
    d_test = test.distances(q.fine, fine) if test is not None else None
    out = []
    for i in range(len(d_ret)):
        if ranking == "today":
            order = np.lexsort((tie, d_ret[i]))
        elif ranking == "default":  # the store's rule: near-duplicates first (codes.py)
            leader = None if test is None else test.leader(d_test[:, i, in_tie], d_fine[i][in_tie])
            key = fine_ranking_key(d_ret[i][in_tie], d_fine[i][in_tie], q.fine.shape[1] * 8,
                                   leader)
            order = in_tie[np.argsort(key, kind="stable")]
        else:
            order = np.lexsort((tie, d_fine[i]))
        out.append([case.ids[j] for j in order[:k]])
    return out


def cosine_nearest(emb: np.ndarray, k: int = 10) -> list[set[int]]:
    """Each row's ``k`` nearest other rows by float cosine (positions)."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return [set(r.tolist()) for r in np.argsort(-sim, axis=1, kind="stable")[:, :k]]


def figures(case: Case, tops: dict[str, list[list[str]]],
            nears: dict[str, list[set[int]]]) -> dict[str, float]:
    """Rank-1 (rotation: in the top 10) per variant and overlap@10 of the same-file queries
    with each cosine reference of ``nears``."""
    out: dict[str, float] = {}
    for v in VARIANTS:
        depth = 10 if v == "rot90" else 1
        out[v] = float(np.mean([case.ids[i] in top[:depth] for i, top in enumerate(tops[v])]))
    pos = {x: j for j, x in enumerate(case.ids)}
    for ref, near in nears.items():
        counts = []
        for i, top in enumerate(tops["same"]):
            others = [pos[x] for x in top if x != case.ids[i]][:10]
            counts.append(len(near[i].intersection(others)))
        out[f"overlap10_{ref}"] = float(np.mean(counts))
    return out




# --------------------------------------------------------------------------- fine distances
def fine_distances(case: Case) -> dict[str, Any]:
    """Fine-code Hamming distances: each original to its changed copies, and to the other
    database images (all, and the nearest one), with duplicate rates at candidate radii."""
    db = case.stored()[1]
    n = len(db)
    same_pair = {v: hamming_distances(case.queries[v].fine, db)[np.arange(n), np.arange(n)]
                 for v in (*CHANGED, "rot90")}
    dd = hamming_distances(db, db).astype(np.float64)
    np.fill_diagonal(dd, np.inf)
    labels = np.array(case.labels)
    same_class = labels[:, None] == labels[None, :]
    iu = np.triu_indices(n, 1)
    pairs = dd[iu]
    nearest = dd.min(axis=1)
    changed = np.concatenate([same_pair[v] for v in CHANGED])
    rates = []
    for r in RADII:
        rates.append({"radius": r, "changed_within": float((changed <= r).mean()),
                      **{f"{v}_within": float((same_pair[v] <= r).mean()) for v in CHANGED},
                      "images_with_distinct_within": float((nearest <= r).mean()),
                      "distinct_pairs_within": int((pairs <= r).sum())})
    pct = (50, 90, 95, 99, 100)
    return {
        "fine_bits": case.bundle.fine_bits,
        "changed": {v: {f"p{p}": float(np.percentile(same_pair[v], p)) for p in pct}
                    for v in (*CHANGED, "rot90")},
        "nearest_distinct": {f"p{p}": float(np.percentile(nearest, p)) for p in (0, 1, 5, 50)},
        "distinct_same_class": {f"p{p}": float(np.percentile(dd[iu][same_class[iu]], p))
                                for p in (0, 1, 5, 50)},
        "rates": rates,
    }
