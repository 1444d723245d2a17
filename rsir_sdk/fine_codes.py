"""How a :class:`~rsir_sdk.Retriever`'s fine codes (issue 20) take part in its searches and writes.

Split from :mod:`rsir_sdk.retriever` because it is one job: deciding, from the bundle and the
collection, whether a search sends fine codes and in which mode, encoding a query's two codes in
one forward pass, checking fine codes a caller gives, finding duplicates by them, and making the fine codes of a learned
database that an older bundle does not carry. The Retriever keeps one :class:`FineCodes`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .call_checks import check_radius_length
from .codes import as_packed
from .encoder import Encoder
from .errors import BundleError, InvalidInputError
from .geo import GeoFilter
from .hits import SEARCH_MODES
from .ingest import writes_fine
from .store import MilvusCodeStore
from .store import keys as store_keys
from .store import values as store_values

log = logging.getLogger(__name__)


class FineCodes:
    """The fine-code side of one retriever: its bundle, encoder and store."""

    def __init__(self, bundle: Bundle, encoder: Encoder, store: MilvusCodeStore):
        self.bundle, self.encoder, self.store = bundle, encoder, store

    @property
    def ranking(self) -> bool:
        """True when the bundle has a fine code and the collection keeps (or, new, will keep)
        fine codes: writes carry both codes, and searches rank ties by the fine code."""
        return writes_fine(self.encoder, self.store)

    def check_mode(self, mode: Any) -> str:
        """``mode`` if it is one of :data:`SEARCH_MODES` that this bundle and collection can
        serve (refused before any image is decoded)."""
        if not isinstance(mode, str) or mode not in SEARCH_MODES:
            raise InvalidInputError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        if mode == "appearance" and self.bundle.fine_bits is None:
            raise InvalidInputError(
                f"mode='appearance' needs a bundle with a fine code; {self.bundle.path} has none "
                f"(written before issue 20, or by hand without one): train it again with rsir "
                f"train, or add a fine-code output (docs/bundle.md)")
        if mode == "appearance" and self.store.exists and self.store.fine_bits is None:
            # refused before any image is decoded (the store would refuse it after encoding)
            from .store.finerank import refuse_appearance

            raise refuse_appearance(self.store)
        return mode

    def encode_query(self, imgs: list[Any], batch_size: int | None, mode: str
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """The queries' retrieval codes and, when the search uses them, their fine codes: one
        forward pass either way."""
        if mode == "appearance" or self.ranking:
            both = self.encoder.encode_both(imgs, batch_size)
            return both.codes, both.fine
        return self.encoder.encode(imgs, batch_size), None

    def store_args(self, fine: np.ndarray | None, mode: str) -> dict[str, Any]:
        """The store's ``fine``/``mode`` keywords: fine codes go only to a collection that keeps
        them (an old one searches as before), and to any in the appearance mode (where a
        collection without them says how to rebuild it)."""
        if mode == "appearance":
            return {"fine": fine, "mode": mode}
        return {"fine": fine} if fine is not None and self.ranking else {}

    @property
    def bundle_lacks_them(self) -> bool:
        """True when the collection keeps fine codes and the bundle has none: the same model
        (the encoder ids matched) with its manifest's ``fine_code`` record removed."""
        return (self.store.exists and self.store.fine_bits is not None
                and self.bundle.fine_bits is None)

    def check_writes(self) -> None:
        """Refuse, before any image is decoded, image writes that could not carry the fine
        codes the collection requires."""
        if self.bundle_lacks_them:
            raise InvalidInputError(
                f"collection {self.store.collection!r} keeps {self.store.fine_bits}-bit fine "
                f"codes but the bundle {self.bundle.path} records no fine code (its manifest.json "
                f"has no 'fine_code'): restore the manifest of the bundle that filled it")

    def given(self, fine: np.ndarray | bytes | None, n: int) -> np.ndarray | None:
        """Caller-given fine codes packed and checked: the bundle's length, one per code."""
        if fine is None:
            return None
        if self.bundle.fine_bits is None:
            raise InvalidInputError(f"fine codes given but the bundle {self.bundle.path} has no "
                                    f"fine code (written before issue 20)")
        packed = as_packed(fine, self.bundle.fine_bits, "fine codes")
        if packed.shape[0] != n:
            raise InvalidInputError(f"{n} codes but {packed.shape[0]} fine codes")
        return packed

    def of_database(self, paths: list[str]) -> np.ndarray:
        """Fine codes of a pre-issue-20 bundle's database images, encoded from the archive."""
        missing = [p for p in paths if not p or not os.path.isabs(p) or not Path(p).is_file()]
        if missing:
            raise BundleError(
                f"bundle {self.bundle.path}: its database.npz has no fine codes (written before "
                f"they were exported) and {len(missing)} of its {len(paths)} database images are "
                f"not on disk (e.g. {missing[0]!r}) to encode them: write the bundle again with "
                f"rsir train, or index the archive with rsir index")
        log.info("bundle %s has no database fine codes: encoding its %d database images",
                 self.bundle.path, len(paths))
        fine = self.encoder.encode_both(paths).fine
        assert fine is not None
        return fine

    def duplicates(self, radius: int | None, filter: Any, geo: GeoFilter) -> list[list[str]]:
        """:meth:`rsir_sdk.Retriever.duplicates`: every argument checked, then the store's
        groups; a bundle without a fine code cannot find any and says so."""
        if radius is not None:
            store_values.radius(radius)
        store_keys.build_filter(filter)
        checked = self.store.check_geo(geo)
        if self.bundle.fine_bits is None:
            raise InvalidInputError(
                f"duplicates are found by the fine code; the bundle {self.bundle.path} has none "
                f"(written before issue 20, or by hand without one): train it again with rsir "
                f"train, or add a fine-code output (docs/bundle.md)")
        check_radius_length(radius, self.bundle.fine_bits, "fine-code")
        return self.store.duplicates(radius, filter, geo=checked)
