"""An HTML gallery of one search: the query image and its hits as thumbnails with distances.

Why: a table of ids and Hamming distances does not tell a person whether retrieval works;
looking at the images does. :func:`write_gallery` writes one self-contained page (thumbnails
inlined as base64 JPEG, so the file can be mailed or opened anywhere) or, with
``embed=False``, a page that links the image files by relative path (small, but it must stay
beside the archive). Images are read by the same code as the encoder reads them
(:func:`rsir_sdk.images.read_image`), so a GeoTIFF shows the pixels the encoder saw.

>>> from rsir_sdk.gallery import write_gallery
>>> write_gallery("out.html", "query.jpg", hits, roots=["archive/"])      # doctest: +SKIP
PosixPath('out.html')
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

from PIL import Image

from . import staging
from .errors import ImageLoadError
from .images import read_image
from .rasters import RasterRule
from .redact import redact_text

THUMB_SIZE = 192

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} .meta{color:#666;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:%(w)dpx;border:1px solid #ddd;border-radius:6px;padding:6px;font-size:.8em;
      overflow-wrap:anywhere}
.card img,.missing{width:%(w)dpx;height:%(w)dpx;object-fit:contain;background:#f3f3f3;display:block}
.missing{display:flex;align-items:center;justify-content:center;color:#a00;text-align:center}
.query{border:2px solid #36c}.same{border-color:#2a2}.d{font-weight:bold}
"""


def resolve_image(path: str, roots: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The file a stored ``path`` names: as it is (absolute or relative to the current folder),
    else under each of ``roots`` in turn; ``None`` when none exists."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute():
        for root in roots:
            q = Path(root) / p
            if q.is_file():
                return q
    return None


def thumbnail_data_uri(src: str | os.PathLike, size: int = THUMB_SIZE,
                       rule: RasterRule | None = None) -> str:
    """A ``data:image/jpeg;base64,...`` thumbnail of an image file (longer side ``size``)."""
    rgb = read_image(src, rule=rule).rgb
    img = Image.fromarray(rgb)
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_link(src: Path, out_dir: Path) -> str:
    """A relative link from ``out_dir`` to the file ``src``: percent-encoded and starting with
    ``./`` or ``../``, so no file name (``javascript:alert(1).jpg``) can read as a URL scheme.

    >>> file_link(Path("/a/javascript:x.jpg"), Path("/a"))
    './javascript%3Ax.jpg'
    """
    rel = Path(os.path.relpath(src.absolute(), out_dir.absolute())).as_posix()
    link = quote(rel, safe="/")
    return link if link.startswith("../") else "./" + link


def _field(hit: Any, name: str, default: Any = "") -> Any:
    if isinstance(hit, dict):
        return hit.get(name, default)
    return getattr(hit, name, default)


def _img_tag(src: Path | None, label: str, out_dir: Path, embed: bool, size: int,
             rule: RasterRule | None) -> str:
    if src is None:
        return f'<div class="missing">image not found<br>{html.escape(label)}</div>'
    if not embed:
        link = file_link(src, out_dir)
        return f'<img loading="lazy" src="{html.escape(link)}" alt="{html.escape(label)}">'
    try:
        uri = thumbnail_data_uri(src, size, rule)
    except ImageLoadError as exc:
        return f'<div class="missing">cannot read image<br>{html.escape(exc.reason)}</div>'
    return f'<img src="{uri}" alt="{html.escape(label)}">'


def write_gallery(
    out: str | os.PathLike,
    query: str | os.PathLike,
    hits: Iterable[Any],
    *,
    roots: Sequence[str | os.PathLike] = (),
    title: str | None = None,
    query_label: str = "",
    embed: bool = True,
    size: int = THUMB_SIZE,
    rule: RasterRule | None = None,
    details: dict[str, Any] | None = None,
) -> Path:
    """Write an HTML page with the query and its ``hits`` (rank, distance, label, id, path).

    ``hits`` are :class:`~rsir_sdk.Hit`/:class:`~rsir_sdk.store.StoreHit` objects or dicts with
    ``id``, ``distance``, ``label``, ``path``. Stored paths are looked up as they are, then
    under each of ``roots`` (give the archive folder when the collection holds relative
    paths); an image that cannot be found is shown as a labelled placeholder, not left out.
    Hits that share the query's label (``query_label``) get a green frame.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_dir = out.parent
    shown = redact_text(str(query))   # an image URL may carry user:password@
    title = title or f"rsir search: {Path(shown).name}"
    qpath = resolve_image(str(query), roots)
    cards = [
        '<div class="card query">'
        + _img_tag(qpath, shown, out_dir, embed, size, rule)
        + f"<div><b>query</b></div><div>{html.escape(shown)}</div>"
        + (f"<div>label {html.escape(query_label)}</div>" if query_label else "")
        + "</div>"
    ]
    for rank, hit in enumerate(hits, 1):
        hid, dist = str(_field(hit, "id")), _field(hit, "distance")
        label, path = str(_field(hit, "label") or ""), str(_field(hit, "path") or "")
        src = resolve_image(path, roots) or resolve_image(hid, roots)
        same = " same" if query_label and label == query_label else ""
        cards.append(
            f'<div class="card{same}">'
            + _img_tag(src, path or hid, out_dir, embed, size, rule)
            + f'<div>#{rank} <span class="d">distance {html.escape(str(dist))}</span></div>'
            + (f"<div>label {html.escape(label)}</div>" if label else "")
            + f"<div>id {html.escape(hid)}</div>"
            + (f'<div class="meta">{html.escape(path)}</div>' if path and path != hid else "")
            + "</div>"
        )
    info = "".join(
        f"<span>{html.escape(str(k))}: {html.escape(str(v))}</span> &nbsp; "
        for k, v in (details or {}).items()
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE % {'w': size}}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='meta'>{info}</p>"
        f"<div class='grid'>{''.join(cards)}</div></body></html>\n"
    )
    staging.replace_text(out, page)
    return out
