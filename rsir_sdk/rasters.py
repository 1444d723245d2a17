"""The raster rule: how a GeoTIFF's samples become the encoder's RGB ``uint8`` input.

Why: remote sensing archives hold TIFFs with 4 to 13 bands, 16-bit or float samples. A photo
loader reads them badly or not at all, and two different conversions of the same scene give
codes that do not compare. This module defines the conversion as one documented, configurable,
recordable value, :class:`RasterRule`, applied to the sample array ``(H, W, bands)``:

1. *Bands*: ``bands=(r, g, b)`` (1-based) picks three bands, ``bands=(k,)`` one band shown as
   grey. Default: band 1 as grey for 1- and 2-band rasters, bands 1, 2, 3 otherwise. Many
   4-band products store **B, G, R, NIR** (PlanetScope, Sentinel-2 stacks of B2, B3, B4, B8):
   give ``bands=(3, 2, 1)`` for true colour.
2. *Stretch* to 0..255, per selected band:

   - ``"range"`` (default, the same rule as :mod:`rsir_sdk.images`): 8-bit as stored; 16-bit
     integers ``value * 255 // 65535``; 32-bit integers that stay within 0..65535 as 16-bit, else
     over their full range; floats must lie in [0, 1] (``* 255``, rounded), other float ranges
     and negative integers are refused with a hint to choose another stretch;
   - ``"percentile"``: linear between the ``percentiles`` (default 2 and 98) of each band's
     valid pixels, clipped (what GIS viewers show by default; adapts to every image);
   - ``"fixed"``: linear between ``value_range = (low, high)`` for every band and every image
     (e.g. ``(0, 3000)`` for Sentinel-2 L2A reflectance × 10000): the same scene always gets the
     same pixels, whatever else is in the tile.

3. *No-data*: NaN pixels and pixels equal to ``nodata`` (default: the file's GDAL_NODATA tag)
   are left out of the percentiles and become 0.

The rule is always an explicit value, never process state: :func:`rsir_sdk.images.read_image`,
:class:`rsir_sdk.Encoder` and :class:`rsir_sdk.Retriever` take it as a parameter, and a
collection records the rule it was filled with, so every later search and write converts
TIFFs the same way (in Python, the ``rsir`` command and the service alike). The rule applies
to TIFF files only; JPEG, PNG and other formats follow :mod:`rsir_sdk.images`. Reading TIFFs is
:mod:`rsir_sdk.tiff`'s job, their georeferencing :mod:`rsir_sdk.georef`'s.

>>> import numpy as np
>>> rule = RasterRule(bands=(3, 2, 1), stretch="fixed", value_range=(0, 3000))
>>> rule.apply(np.full((2, 2, 4), 1500, np.uint16))[0, 0].tolist()
[128, 128, 128]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import ImageLoadError, RasterRuleError

STRETCHES = ("range", "percentile", "fixed")
#: at most this many pixels per band are sampled to estimate percentiles
PERCENTILE_SAMPLE = 1 << 20

__all__ = ["DEFAULT_RULE", "RasterRule", "RasterRuleError", "STRETCHES", "as_rule"]


@dataclass(frozen=True)
class RasterRule:
    """How a raster's samples become RGB ``uint8``: band choice, stretch, no-data.

    See the module docstring for the full rule. ``parse`` reads the command-line form.

    >>> RasterRule.parse("bands=4,3,2;stretch=percentile:1,99").to_dict()["percentiles"]
    [1.0, 99.0]
    """

    bands: tuple[int, ...] | None = None
    stretch: str = "range"
    percentiles: tuple[float, float] = (2.0, 98.0)
    value_range: tuple[float, float] | None = None
    nodata: float | None = None

    def __post_init__(self) -> None:
        if self.stretch not in STRETCHES:
            raise RasterRuleError(
                f"unknown stretch {self.stretch!r}; choose one of {', '.join(STRETCHES)}"
            )
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if len(bands) not in (1, 3) or min(bands) < 1:
                raise RasterRuleError(
                    f"bands must be 1 or 3 band numbers counted from 1 (e.g. 4,3,2), got {self.bands}"
                )
            object.__setattr__(self, "bands", bands)
        lo, hi = (float(x) for x in self.percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise RasterRuleError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (lo, hi))
        if self.stretch == "fixed":
            if self.value_range is None:
                raise RasterRuleError("stretch 'fixed' needs value_range=(low, high), e.g. fixed:0,3000")
            vlo, vhi = (float(x) for x in self.value_range)
            if not vlo < vhi:
                raise RasterRuleError(f"value_range must have low < high, got {self.value_range}")
            object.__setattr__(self, "value_range", (vlo, vhi))
        elif self.value_range is not None:
            raise RasterRuleError("value_range is only used with stretch 'fixed'")

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (recorded with a collection)."""
        return {
            "bands": list(self.bands) if self.bands else None,
            "stretch": self.stretch,
            "percentiles": list(self.percentiles),
            "value_range": list(self.value_range) if self.value_range else None,
            "nodata": self.nodata,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> "RasterRule":
        """The inverse of :meth:`to_dict` (``None`` → the default rule)."""
        if not obj:
            return cls()
        return cls(
            bands=tuple(obj["bands"]) if obj.get("bands") else None,
            stretch=str(obj.get("stretch", "range")),
            percentiles=tuple(obj.get("percentiles") or (2.0, 98.0)),
            value_range=tuple(obj["value_range"]) if obj.get("value_range") else None,
            nodata=obj.get("nodata"),
        )

    @classmethod
    def parse(cls, text: str | None) -> "RasterRule":
        """Read ``"bands=4,3,2;stretch=percentile:2,98;nodata=0"`` (every part optional).

        ``stretch`` is ``range``, ``percentile[:low,high]`` or ``fixed:low,high``.
        """
        if not text or not text.strip():
            return cls()
        kw: dict[str, Any] = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise RasterRuleError(f"raster rule part {part!r} is not key=value")
            try:
                if key == "bands":
                    kw["bands"] = tuple(int(b) for b in value.split(","))
                elif key == "stretch":
                    kw.update(_parse_stretch(value))
                elif key == "nodata":
                    kw["nodata"] = float(value)
                else:
                    raise RasterRuleError(
                        f"unknown raster rule key {key!r} (use bands, stretch, nodata)"
                    )
            except ValueError as exc:
                if isinstance(exc, RasterRuleError):
                    raise
                raise RasterRuleError(f"bad value in raster rule part {part!r}: {exc}") from None
        return cls(**kw)

    def describe(self) -> str:
        """The rule in the :meth:`parse` form."""
        parts = []
        if self.bands:
            parts.append("bands=" + ",".join(str(b) for b in self.bands))
        if self.stretch == "percentile":
            parts.append(f"stretch=percentile:{_num(self.percentiles[0])},{_num(self.percentiles[1])}")
        elif self.stretch == "fixed" and self.value_range is not None:
            parts.append(f"stretch=fixed:{_num(self.value_range[0])},{_num(self.value_range[1])}")
        else:
            parts.append("stretch=range")
        if self.nodata is not None:
            parts.append(f"nodata={_num(self.nodata)}")
        return ";".join(parts)

    @property
    def is_default(self) -> bool:
        """True for the rule that reproduces :mod:`rsir_sdk.images` exactly."""
        return self == RasterRule()

    # ------------------------------------------------------------ the conversion
    def apply(self, samples: np.ndarray, nodata: float | None = None, name: str = "<raster>") -> np.ndarray:
        """Turn samples ``(H, W)`` or ``(H, W, bands)`` into RGB ``uint8 (H, W, 3)``.

        ``nodata`` is the file's no-data value, used when the rule sets none.
        """
        a = np.asarray(samples)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
            raise ImageLoadError(name, f"raster samples must be (H, W, bands), got shape {a.shape}")
        n = a.shape[2]
        picks = self.bands or ((1,) if n < 3 else (1, 2, 3))
        if max(picks) > n:
            raise ImageLoadError(
                name, f"the raster rule asks for band {max(picks)} but the raster has {n} band(s)"
            )
        sel = a[..., [b - 1 for b in picks]]
        nd = self.nodata if self.nodata is not None else nodata
        if sel.dtype == bool:
            sel = sel.astype(np.uint8) * 255
        if self.stretch == "range":
            out = _range_stretch(sel, nd, name)
        else:
            out = _linear_stretch(sel, nd, self, name)
        if out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)
        return np.ascontiguousarray(out)


DEFAULT_RULE = RasterRule()


#: what to do about a raster the default stretch cannot read: a rule holds for a whole
#: collection (codes of images converted differently do not compare), so it needs a new one
_STRETCH_HINT = ("choose a stretch for the archive (--stretch percentile, or fixed:LOW,HIGH), "
                 "indexed into a new collection: one keeps the rule it was filled with")


def _range_stretch(a: np.ndarray, nodata: float | None, name: str) -> np.ndarray:
    mask = _invalid(a, nodata)
    if a.dtype == np.uint8:
        out = a.copy()
    elif np.issubdtype(a.dtype, np.floating):
        valid = a[~mask] if mask is not None else a
        if valid.size:
            lo, hi = float(valid.min()), float(valid.max())
            if lo < 0.0 or hi > 1.0:
                raise ImageLoadError(
                    name, f"float raster values lie in [{lo:.4g}, {hi:.4g}], not [0, 1]: "
                          f"{_STRETCH_HINT}"
                )
        out = np.rint(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).clip(0, 1) * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        valid = a[~mask] if mask is not None else a
        if valid.size and int(valid.min()) < 0:
            raise ImageLoadError(
                name, f"integer raster holds negative values: {_STRETCH_HINT}"
            )
        if a.dtype.itemsize <= 2 or (valid.size == 0 or int(valid.max()) <= 65535):
            top = 65535
        else:
            top = 2**32 - 1
        out = np.clip((np.clip(a, 0, top).astype(np.uint64) * 255) // top, 0, 255).astype(np.uint8)
    else:
        raise ImageLoadError(name, f"unsupported raster sample type {a.dtype}")
    if mask is not None:
        out[mask] = 0
    return out


def _linear_stretch(a: np.ndarray, nodata: float | None, rule: RasterRule, name: str) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageLoadError(name, f"unsupported raster sample type {a.dtype}")
    x = a.astype(np.float64 if a.dtype.itemsize > 4 else np.float32)
    mask = _invalid(a, nodata)
    out = np.zeros(a.shape, dtype=np.uint8)
    for b in range(a.shape[2]):
        band = x[..., b]
        bmask = mask[..., b] if mask is not None else None
        if rule.stretch == "fixed" and rule.value_range is not None:
            lo, hi = rule.value_range
        else:
            valid = band[~bmask] if bmask is not None else band.ravel()
            if valid.size == 0:
                continue  # nothing valid: the band stays 0
            if valid.size > PERCENTILE_SAMPLE:  # a deterministic, evenly strided sample
                valid = valid[:: valid.size // PERCENTILE_SAMPLE + 1]
            lo, hi = (float(v) for v in np.percentile(valid, rule.percentiles))
        if hi <= lo:
            continue  # a constant band carries no contrast: 0
        scaled = (band - lo) * (255.0 / (hi - lo))
        out[..., b] = np.rint(np.nan_to_num(scaled, nan=0.0).clip(0, 255)).astype(np.uint8)
        if bmask is not None:
            out[..., b][bmask] = 0
    return out


def _invalid(a: np.ndarray, nodata: float | None) -> np.ndarray | None:
    mask = None
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            mask = bad
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        eq = a == nodata
        if eq.any():
            mask = eq if mask is None else (mask | eq)
    return mask




def as_rule(rule: RasterRule | str | Mapping[str, Any] | None) -> RasterRule:
    """A :class:`RasterRule` from a rule, its ``parse`` text or ``to_dict`` form; ``None`` →
    :data:`DEFAULT_RULE`."""
    if rule is None:
        return DEFAULT_RULE
    if isinstance(rule, RasterRule):
        return rule
    if isinstance(rule, str):
        return RasterRule.parse(rule)
    return RasterRule.from_dict(rule)


def _parse_stretch(value: str) -> dict[str, Any]:
    kind, _, args = value.partition(":")
    kind = kind.strip()
    nums = tuple(float(v) for v in args.split(",")) if args.strip() else ()
    if kind == "range":
        if nums:
            raise RasterRuleError("stretch 'range' takes no values")
        return {"stretch": "range"}
    if kind == "percentile":
        if nums and len(nums) != 2:
            raise RasterRuleError("stretch 'percentile' takes two values: percentile:LOW,HIGH")
        return {"stretch": "percentile", **({"percentiles": nums} if nums else {})}
    if kind == "fixed":
        if len(nums) != 2:
            raise RasterRuleError("stretch 'fixed' takes two values: fixed:LOW,HIGH")
        return {"stretch": "fixed", "value_range": nums}
    raise RasterRuleError(f"unknown stretch {kind!r}; choose one of {', '.join(STRETCHES)}")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))

