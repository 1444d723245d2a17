"""The markdown report of ``benchmarks/similar.py``: its tables and the text around them.

Why a module of its own: turning the figures of every bundle into the docs section is a job
apart from measuring them (``_similar_queries.py``, ``similar.py``).
"""

from __future__ import annotations

from typing import Any

from _common import table
from _similar_queries import CHANGED, HEADS, RANKINGS, VARIANTS

from rsir_sdk.store import DEFAULT_DUPLICATE_RADIUS


def rank_rows(results: list[dict[str, Any]], source: str) -> list[list[Any]]:
    """One row per bundle and ranking."""
    rows = []
    for res in results:
        for r in RANKINGS:
            f = res[source][r]
            label = {"today": "today (no fine codes)", "default": "default (fine codes kept)",
                     "appearance": "appearance mode"}[r]
            rows.append([res["case"], label, *(f"{f[v]:.3f}" for v in VARIANTS),
                         f"{f['overlap10_embedding']:.2f}", f"{f.get('overlap10_pooled', float('nan')):.2f}"]
                        + ([f"{res['agree'][r]}/{res['queries']}"] if source == "milvus" else []))
        rows.append([res["case"], "(retrieval-first ceiling)", *(f"{res['ceiling'][v]:.3f}" for v in VARIANTS),
                     "", ""] + ([""] if source == "milvus" else []))
    return rows


def distance_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Fine-code distances of changed copies vs distinct images, per bundle."""
    rows = []
    for res in results:
        fd = res["fine_distances"]
        ch = fd["changed"]
        rows.append([res["case"], fd["fine_bits"],
                     *(f"{ch[v]['p50']:.0f} / {ch[v]['p95']:.0f} / {ch[v]['p100']:.0f}"
                       for v in (*CHANGED, "rot90")),
                     " / ".join(f"{fd['nearest_distinct'][p]:.0f}" for p in ("p0", "p1", "p5", "p50")),
                     " / ".join(f"{fd['distinct_same_class'][p]:.0f}" for p in ("p0", "p1", "p5", "p50"))])
    return rows


def radius_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Per candidate radius: changed copies found, images that would gain a false duplicate."""
    rows = []
    for res in results:
        for rate in res["fine_distances"]["rates"]:
            rows.append([res["case"], rate["radius"], *(f"{rate[f'{v}_within']:.3f}" for v in CHANGED),
                         f"{rate['images_with_distinct_within']:.3f}", rate["distinct_pairs_within"]])
    return rows


def dup_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """The ``Retriever.duplicates`` check, per bundle and radius."""
    rows = []
    for res in results:
        for d in res.get("duplicates", []):
            radius = f"{d['radius']} (default)" if d.get("default") else d["radius"]
            rows.append([res["case"], radius, *(f"{d['found'][v]:.3f}" for v in CHANGED),
                         d["groups"], d["mixed_groups"], d["images_in_mixed"], d["largest"]])
    return rows


def render(results: list[dict[str, Any]], source: str) -> str:
    """The markdown body: the ranking table, the distances and the radius table."""
    heads = ["bundle", "ranking", *(HEADS[v] for v in VARIANTS), "overlap@10 embedding",
             "overlap@10 pooled"]
    if source == "milvus":
        heads.append("= memory")
    info = "; ".join(f"{r['case']}: {r['n']} images, {r['distinct_codes']} distinct codes, "
                     f"{r['distinct_fine']} distinct fine codes" for r in results)
    parts = [
        f"Rank-1 rate (rotation: in the top 10) of each database image queried as itself and "
        f"lightly changed, {'through Milvus' if source == 'milvus' else 'ranked in numpy'}; "
        f"overlap@10 (same-file queries): of the 10 nearest other database images by float "
        f"cosine of the bundle's embeddings (the continuous output its retrieval code is the sign "
        f"of), or of the pooled features its fine code is fitted on, how many the first 10 hits "
        f"(the query's own image left out) hold. `(retrieval-first ceiling)`: the share of "
        f"queries whose original is in the nearest group of retrieval codes (rotation: among the "
        f"10 nearest, ties counted in), the most a ranking that keeps the retrieval distance "
        f"first can reach; the default ranking puts near-duplicates (fine distance within the "
        f"duplicates radius, or clearly the nearest by the ratio test) ahead of it, so it can "
        f"pass it. `= memory`: queries whose 10 hits from Milvus equal the same ranking "
        f"computed in numpy (a check of the store). {info}.",
        "", table(heads, rank_rows(results, source)), "",
        "Fine-code Hamming distance of each original to its changed copy (p50 / p95 / max), and "
        "to distinct database images: the nearest one per image and all same-class pairs "
        "(min / p1 / p5 / p50):", "",
        table(["bundle", "fine bits", *(f"{HEADS[v] if v != 'rot90' else 'rot 90'}" for v in
                                        (*CHANGED, "rot90")),
               "nearest distinct", "distinct, same class"], distance_rows(results)), "",
        "Duplicates radius (inclusive): the share of changed copies within it, and the share of "
        "database images with a distinct image within it (a false duplicate):", "",
        table(["bundle", "radius", *(HEADS[v] for v in CHANGED), "images with a distinct one within",
               "distinct pairs within"], radius_rows(results)),
    ]
    dups = dup_rows(results)
    if dups:
        parts += ["", f"`Retriever.duplicates(radius)` on a collection of the database images and "
                  f"their JPEG, crop and brightness copies (4 x {results[0]['n']} items): the share "
                  f"of copies in their original's group, the groups, the groups joining distinct "
                  f"database images and the images in those, the largest group "
                  f"(`(default)`: `radius=None`, {DEFAULT_DUPLICATE_RADIUS} bits per 128 of "
                  f"fine code):", "",
                  table(["bundle", "radius", *(HEADS[v] for v in CHANGED), "groups",
                         "groups of distinct images", "images in them", "largest"], dups)]
    return "\n".join(parts)
