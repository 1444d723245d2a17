"""A GeoTIFF archive: 4-band 16-bit rasters (B, G, R, NIR), a raster rule, footprints on hits.

    python examples/geotiff_archive.py /data/s2-tiles --bundle my-bundle --uri ./s2.db
    python examples/geotiff_archive.py --demo OUT_DIR --bundle my-bundle   # makes a small archive

The raster rule (which bands are R, G, B; how 16-bit reflectance is stretched) is recorded by
the collection: every later search converts query TIFFs the same way.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from rsir_sdk import Retriever, RsirError

GEO_EXTRA = 'pip install "rsir-sdk[geo]"'


def missing_geo_extra() -> list[str]:
    """The packages of the ``geo`` extra that are not installed (tifffile reads multi-band,
    16-bit GeoTIFFs; imagecodecs their LZW/Deflate/ZSTD compression)."""
    missing = []
    for name in ("tifffile", "imagecodecs"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def make_demo_archive(out: Path, sample: Path, n: int = 20) -> Path:
    """Turn sample JPEGs into georeferenced 16-bit B, G, R, NIR GeoTIFFs (UTM 33N tiles)."""
    import tifffile
    from PIL import Image

    for i, jpg in enumerate(sorted(sample.rglob("*.jpg"))[:: max(1, 200 // n)][:n]):
        rgb = np.asarray(Image.open(jpg).convert("RGB")).astype(np.uint16) * 12
        bgrn = np.dstack([rgb[..., 2], rgb[..., 1], rgb[..., 0], np.full(rgb.shape[:2], 3000, np.uint16)])
        x0, y0 = 500000.0 + 640 * (i % 5), 5000000.0 - 640 * (i // 5)   # 10 m pixels
        tags = [(33550, "d", 3, (10.0, 10.0, 0.0)), (33922, "d", 6, (0, 0, 0, x0, y0, 0)),
                (34735, "H", 8, (1, 1, 0, 1, 3072, 0, 1, 32633))]
        dst = out / jpg.parent.name / f"{jpg.stem}.tif"
        dst.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(dst, bgrn, photometric="minisblack", planarconfig="contig", extratags=tags)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("archive", nargs="?", help="folder of GeoTIFFs")
    p.add_argument("--demo", metavar="OUT_DIR", help="build a small demo archive here first")
    p.add_argument("--sample", default=None, help="JPEG folder for --demo (default: the shipped sample)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--uri", default="./geotiff.db")
    p.add_argument("--collection", default="s2_tiles")
    args = p.parse_args(argv)
    missing = missing_geo_extra()
    if missing:
        print(f"error: GeoTIFF archives need the geo extra ({', '.join(missing)} not installed): "
              f"{GEO_EXTRA}", file=sys.stderr)
        return 1
    archive = Path(args.archive) if args.archive else None
    if args.demo:
        sample = Path(args.sample) if args.sample else Path(__file__).resolve().parents[1] / \
            "export" / "rsir_train" / "sample" / "eurosat"
        archive = make_demo_archive(Path(args.demo), sample)
    if archive is None:
        p.error("give an ARCHIVE or --demo OUT_DIR")
    try:
        # B, G, R, NIR stacks: bands 3,2,1 are true colour; the percentile stretch adapts to
        # each tile's 16-bit range. The new collection records this rule.
        rule = "bands=3,2,1;stretch=percentile:2,98"
        with Retriever(args.bundle, uri=args.uri, collection=args.collection, raster_rule=rule) as r:
            summary = r.index(archive, label_from="parent")
            print(f"indexed {summary.indexed}, failed {len(summary.failed)}")
            query = sorted(archive.rglob("*.tif"))[0]
            # No rule needed here: the collection's recorded rule converts the query.
            for h in r.search(query, k=5):
                west, south, east, north = h.metadata.get("lonlat_bounds", [None] * 4)
                print(f"distance {h.distance:3d}  {h.label:20s} {h.metadata.get('crs', '-')}  "
                      f"footprint lon {west}..{east}, lat {south}..{north}")
    except RsirError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
