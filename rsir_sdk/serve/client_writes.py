"""The work behind :class:`~rsir_sdk.serve.client.RemoteRetriever`'s image and code writes.

Functions of the RemoteRetriever, as :mod:`rsir_sdk.retriever_writes` holds the local
Retriever's: the class stays one class with thin write methods (no mixin), and
:mod:`rsir_sdk.serve.client` stays short. Every value is checked here, before any request;
writes are upserts by id on the service, so the transport may retry them.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from ..call_checks import images_with_ids
from ..codes import as_packed
from ..errors import ImageLoadError, InvalidInputError, RsirError
from ..georef import with_georefs
from ..store import values as store_values
from .geo_wire import footprints_to_wire, times_to_wire
from .wire import base64_rows, check_columns, check_fine_given, chunks, columns_part

if TYPE_CHECKING:  # pragma: no cover
    from .client import RemoteRetriever

#: (labels, paths, metadata) of the items written, each None or one value per item
Columns = tuple[Sequence[str] | None, Sequence[str] | None,
                Sequence[Mapping[str, Any] | None] | None]
#: (footprints, times) of the items written, each None or one value per item
Place = tuple[Sequence[Any] | None, Sequence[Any] | None]


def add_images(r: "RemoteRetriever", images: Sequence[Any], ids: Sequence[str] | None,
               columns: Columns, place: Place, batch_size: int | None) -> int:
    """:meth:`RemoteRetriever.add_images`: with a local bundle, both codes of every image (and
    a GeoTIFF's place, as ``rsir index`` keeps it) made here and sent as codes; else the image
    files uploaded ``batch_size`` at a time."""
    labels, paths, metadata = columns
    images, ids, paths = images_with_ids(images, ids, paths)
    check_columns(ids, labels, paths, metadata)
    places = footprints_to_wire(place[0], ids)
    when = times_to_wire(place[1], ids)
    if r.encoder is not None:
        codes, fine, georefs = r.encoder.encode_for_writes(
            images, batch_size, r.encoder.fine_bits is not None)
        metadata = with_georefs(metadata, georefs)
        return r.add_codes(codes, ids, labels, paths, metadata, footprints=places,
                           times=when, fine=fine)
    wire = {"ids": ids, "labels": labels, "paths": paths, "metadata": metadata,
            "footprints": places, "times": when}
    written = 0
    requests = r._uploads(images, batch_size)
    while True:
        with _saying_written(written, len(images), "images"):  # reading the next ones too
            upload = next(requests, None)
            if upload is None:
                return written
            cols = columns_part(wire, upload.part)
            if upload.urls:  # the service downloads them
                answer = r._request("POST", "/v1/items", json_body={"urls": upload.urls, **cols})
            else:
                form = {name: json.dumps(v) for name, v in cols.items()}
                answer = r._request("POST", "/v1/items", files=upload.files, data=form)
            written += int(answer["written"])


@contextlib.contextmanager
def _saying_written(written: int, total: int, what: str) -> Iterator[None]:
    """An error of a later request says how many items earlier requests wrote (``.written``,
    and in its message): a batch larger than one request is written request by request, and
    ``Retriever.add_images``, which writes nothing when one image fails, read the same."""
    try:
        yield
    except RsirError as exc:
        if written:
            exc.written = written  # type: ignore[attr-defined]
            note = (f" ({written} of the {total} {what} were written by earlier requests; "
                    f"writing them again is safe)")
            exc.args = (f"{exc.args[0]}{note}",) + exc.args[1:] if exc.args else (note,)
            if isinstance(exc, ImageLoadError):
                exc.reason += note
        raise


def add_codes(r: "RemoteRetriever", codes: np.ndarray | bytes, ids: Sequence[str],
              columns: Columns, place: Place, fine: np.ndarray | bytes | None) -> int:
    """:meth:`RemoteRetriever.add_codes`: the codes checked against the bundle's (or the
    service's) length, fine codes against its width, then sent ``max_codes`` per request with
    the encoder's id, so that a service filled by another encoder refuses them."""
    labels, paths, metadata = columns
    packed = as_packed(codes, r._bits())
    ids = store_values.ids(ids)
    if len(ids) != len(packed):
        raise InvalidInputError(f"{len(ids)} ids but {len(packed)} codes")
    fine_rows = r._fine(fine, len(packed))
    check_fine_given(fine_rows, None, r._info or r.info())
    check_columns(ids, labels, paths, metadata)
    wire = {"labels": labels, "paths": paths, "metadata": metadata,
            "footprints": footprints_to_wire(place[0], ids), "times": times_to_wire(place[1], ids)}
    written = 0
    for part in chunks(len(ids), int(r._limits()["max_codes"])):
        body = {"ids": ids[part], "codes": base64_rows(packed[part]), **columns_part(wire, part)}
        if fine_rows is not None:
            body["fine_codes"] = base64_rows(fine_rows[part])
        with _saying_written(written, len(ids), "codes"):
            written += int(r._request("POST", "/v1/codes", json_body=body,
                                      headers=r._encoder_header())["written"])
    return written
