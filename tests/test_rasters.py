"""Raster rules and GeoTIFF reading: multi-band, 16-bit, float rasters, georeferencing."""

import numpy as np
import pytest
from PIL import Image

from rsir_sdk import tiff
from rsir_sdk.errors import ImageLoadError
from rsir_sdk.georef import georeference, to_lonlat
from rsir_sdk.images import load_image, read_image
from rsir_sdk.rasters import RasterRule, RasterRuleError

tifffile = pytest.importorskip("tifffile")  # the geo extra; the dev extra installs it

UTM33N = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)


def geotags(x0=500000.0, y0=5000000.0, scale=10.0, keys=UTM33N, nodata=None):
    tags = [(33550, "d", 3, (scale, scale, 0.0)), (33922, "d", 6, (0, 0, 0, x0, y0, 0)),
            (34735, "H", len(keys), keys)]
    if nodata is not None:
        tags.append((42113, "s", 0, str(nodata), False))
    return tags


def scene(sample_images, i=0) -> np.ndarray:
    return np.asarray(Image.open(sample_images[i][0]).convert("RGB"))


def test_rule_parse_describe_roundtrip():
    for text in ("stretch=range", "bands=4,3,2;stretch=percentile:1,99",
                 "bands=1;stretch=fixed:0,3000;nodata=0", "stretch=percentile:2,98"):
        rule = RasterRule.parse(text)
        assert RasterRule.parse(rule.describe()) == rule
        assert RasterRule.from_dict(rule.to_dict()) == rule
    assert RasterRule.parse("") == RasterRule() and RasterRule().is_default
    assert RasterRule.parse("stretch=percentile").percentiles == (2.0, 98.0)
    for bad, msg in [("bands=1,2", "1 or 3"), ("bands=0,1,2", "1 or 3"), ("stretch=log", "unknown stretch"),
                     ("stretch=fixed", "two values"), ("stretch=percentile:50,10", "low < high"),
                     ("colour=1", "unknown raster rule key"), ("bands", "key=value"),
                     ("bands=a,b,c", "bad value")]:
        with pytest.raises(RasterRuleError, match=msg):
            RasterRule.parse(bad)


def test_rule_apply_documented_conversions():
    u16 = np.array([[[0, 65535, 257 * 10, 9]]], np.uint16)  # one pixel, 4 bands
    assert RasterRule().apply(u16).tolist() == [[[0, 255, 10]]]  # bands 1-3, value*255//65535
    assert RasterRule(bands=(4, 3, 2)).apply(u16).tolist() == [[[0, 10, 255]]]
    assert RasterRule(bands=(2,)).apply(u16).tolist() == [[[255, 255, 255]]]  # grey
    fixed = RasterRule(stretch="fixed", value_range=(0, 3000)).apply(np.array([[[-5, 1500, 3000, 9000]]]))
    assert fixed.tolist() == [[[0, 128, 255]]]
    ramp = np.arange(101, dtype=np.float32).reshape(1, 101, 1)
    pct = RasterRule(stretch="percentile", percentiles=(10, 90)).apply(ramp)
    assert pct[0, 10, 0] == 0 and pct[0, 90, 0] == 255 and pct[0, 50, 0] == 128
    assert pct[0, 0, 0] == 0 and pct[0, 100, 0] == 255  # clipped
    # no-data (the rule's or the file's) and NaN become 0 and stay out of the percentiles
    withnd = np.array([[[0.0], [10.0], [20.0], [np.nan], [-9999.0]]], np.float32).reshape(1, 5, 1)
    out = RasterRule(stretch="percentile", percentiles=(0, 100)).apply(withnd, nodata=-9999.0)
    assert out[0, :, 0].tolist() == [0, 128, 255, 0, 0]
    assert RasterRule().apply(np.array([[0.5]], np.float32)).tolist() == [[[128, 128, 128]]]
    with pytest.raises(ImageLoadError, match=r"not \[0, 1\].*stretch"):
        RasterRule().apply(np.array([[2.5]], np.float32))
    with pytest.raises(ImageLoadError, match="negative.*stretch"):
        RasterRule().apply(np.array([[-1, 5]], np.int16))
    with pytest.raises(ImageLoadError, match="band 5 but the raster has 4"):
        RasterRule(bands=(5, 1, 2)).apply(u16)
    const = RasterRule(stretch="percentile").apply(np.full((3, 3), 7, np.uint16))
    assert (const == 0).all()


def test_multiband_16bit_geotiff_is_read_and_georeferenced(tmp_path, sample_images):
    rgb = scene(sample_images).astype(np.uint16) * 12  # 0..3060, like reflectance x 10000
    nir = np.full(rgb.shape[:2] + (1,), 4000, np.uint16)
    bgrn = np.concatenate([rgb[..., ::-1], nir], axis=2)  # B, G, R, NIR as many products store
    path = tmp_path / "s2.tif"
    tifffile.imwrite(path, bgrn, photometric="minisblack", planarconfig="contig",
                     extratags=geotags())
    r = read_image(path, rule="bands=3,2,1;stretch=fixed:0,3060")
    assert r.reader == "tifffile" and r.bands == 4 and r.dtype == "uint16"
    assert np.abs(r.rgb.astype(int) - scene(sample_images)).max() <= 1  # true colour back
    assert r.georef["crs"] == "EPSG:32633"
    assert r.georef["bounds"] == [500000.0, 5000000.0 - 640, 500640.0, 5000000.0]
    lon, lat = r.georef["lonlat"]
    assert abs(lon - 15.004) < 0.001 and abs(lat - 45.1506) < 0.001
    w, s, e, n = r.georef["lonlat_bounds"]
    assert w < lon < e and s < lat < n
    # the default rule: bands 1-3 over the 16-bit range (B, G, R as stored: dark, blue-first)
    default = read_image(path).rgb
    assert default.dtype == np.uint8 and default.shape == (64, 64, 3)
    assert (default == (bgrn[..., :3].astype(np.uint64) * 255 // 65535)).all()
    # band-separate layout gives the same pixels
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(bgrn, 2, 0), photometric="minisblack",
                     planarconfig="separate")
    assert (read_image(planar, rule="bands=3,2,1;stretch=fixed:0,3060").rgb == r.rgb).all()


def test_float_and_many_band_rasters(tmp_path, sample_images):
    base = scene(sample_images).astype(np.float32) / 255.0
    f3 = tmp_path / "float_rgb.tif"
    tifffile.imwrite(f3, base, photometric="rgb")
    assert np.abs(read_image(f3).rgb.astype(int) - scene(sample_images)).max() <= 1
    dem = tmp_path / "dem.tif"
    tifffile.imwrite(dem, base[..., 0] * 800 - 50, photometric="minisblack",
                     extratags=geotags(nodata=-9999))
    with pytest.raises(ImageLoadError, match="stretch"):
        read_image(dem)
    stretched = read_image(dem, rule="stretch=percentile").rgb
    assert stretched.min() == 0 and stretched.max() == 255
    bands13 = tmp_path / "s2_13.tif"
    stack = np.stack([scene(sample_images, i)[..., i % 3] for i in range(13)], axis=2)
    tifffile.imwrite(bands13, stack, photometric="minisblack", planarconfig="contig")
    out = read_image(bands13, rule="bands=4,3,2").rgb
    assert (out == stack[..., [3, 2, 1]]).all()


def test_load_image_applies_the_rule_it_is_given_and_nothing_else(tmp_path, sample_images):
    img = scene(sample_images)
    bgrn = np.concatenate([img[..., ::-1], np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, bgrn, photometric="minisblack", planarconfig="contig")
    assert (load_image(path) == img[..., ::-1]).all()  # default: bands 1, 2, 3 (B, G, R)
    assert (load_image(path, rule="bands=3,2,1") == img).all()
    assert (load_image(path.read_bytes(), rule=RasterRule(bands=(3, 2, 1))) == img).all()
    assert (load_image(path) == img[..., ::-1]).all()  # no state left behind
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # a rule travels with the call, into any thread
        got = pool.submit(load_image, path, rule="bands=3,2,1").result()
        default = pool.submit(load_image, path).result()
    assert (got == img).all() and (default == img[..., ::-1]).all()
    # a Pillow-written 8-bit RGB TIFF reads as Pillow reads it
    rgbtif = tmp_path / "rgb.tif"
    Image.fromarray(img).save(rgbtif)
    assert (load_image(rgbtif) == img).all()


def test_without_tifffile_pillow_reads_what_it_can_and_says_what_to_install(
    tmp_path, sample_images, monkeypatch
):
    img = scene(sample_images)
    gray16 = (img[..., 0].astype(np.uint16) * 257)
    g16 = tmp_path / "g16.tif"
    tifffile.imwrite(g16, gray16, photometric="minisblack", extratags=geotags())
    four = tmp_path / "four16.tif"
    tifffile.imwrite(four, np.dstack([gray16] * 4), photometric="minisblack", planarconfig="contig")
    with_tifffile = read_image(g16)
    monkeypatch.setattr(tiff, "tifffile_available", lambda: False)
    pil = read_image(g16)
    assert pil.reader == "pillow" and (pil.rgb == with_tifffile.rgb).all()
    assert pil.georef == with_tifffile.georef and pil.georef["crs"] == "EPSG:32633"
    with pytest.raises(ImageLoadError, match=r"rsir-sdk\[geo\]"):
        read_image(four)


def test_corrupt_empty_and_huge_tiffs(tmp_path, sample_images):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, scene(sample_images), photometric="rgb")
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(good.read_bytes()[:300])
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.tif"
    Image.new("1", (12000, 10000)).save(huge, compression="tiff_deflate")
    for path, reason in [(trunc, "TIFF|corrupt"), (empty, "empty"), (huge, "pixel limit")]:
        with pytest.raises(ImageLoadError, match=reason) as err:
            read_image(path)
        assert str(path) in str(err.value)
    with pytest.raises(ImageLoadError, match="pixel limit"):
        load_image(huge)


def test_georeference_variants():
    assert georeference({}, 10, 10) == {}
    # pixel-is-point: tie points name pixel centres, bounds move out by half a pixel
    keys = (1, 1, 0, 2, 1025, 0, 1, 2, 3072, 0, 1, 32633)
    g = georeference({33550: (10.0, 10.0, 0.0), 33922: (0, 0, 0, 500000.0, 5000000.0, 0),
                      34735: keys}, 2, 2)
    assert g["bounds"] == [499995.0, 4999985.0, 500015.0, 5000005.0]
    # geographic WGS84, given by a ModelTransformation matrix
    m = (0.001, 0, 0, 10.0, 0, -0.001, 0, 50.0, 0, 0, 0, 0, 0, 0, 0, 1)
    g = georeference({34264: m, 34735: (1, 1, 0, 1, 2048, 0, 1, 4326)}, 1000, 500)
    assert g["crs"] == "EPSG:4326" and g["lonlat_bounds"] == [10.0, 49.5, 11.0, 50.0]
    assert g["lonlat"] == [10.5, 49.75]
    # user-defined CRS: bounds, but no EPSG code nor lon/lat, and one line saying why
    g = georeference({33550: (1.0, 1.0, 0.0), 33922: (0, 0, 0, 0.0, 0.0, 0),
                      34735: (1, 1, 0, 1, 3072, 0, 1, 32767)}, 4, 4)
    assert g["bounds"] == [0.0, -4.0, 4.0, 0.0] and "lonlat_bounds" not in g
    assert g["footprint_error"].startswith("a CRS without an EPSG code")
    # UTM metres tagged as EPSG:4326, and a NaN tie point: no footprint, and said so (the image
    # was indexed without a place and without a word: a place search then never found it)
    wgs84 = (1, 1, 0, 2, 1024, 0, 1, 2, 2048, 0, 1, 4326)
    g = georeference({33550: (10.0, 10.0, 0.0), 33922: (0, 0, 0, 448000.0, 5412000.0, 0),
                      34735: wgs84}, 64, 64)
    assert "lonlat_bounds" not in g and "past 90" in g["footprint_error"]
    assert "metres tagged as degrees" in g["footprint_error"]
    g = georeference({33550: (1.0, 1.0, 0.0), 33922: (0, 0, 0, float("nan"), 5.0, 0),
                      34735: wgs84}, 4, 4)
    assert "bounds" not in g and "not finite" in g["footprint_error"]


def test_to_lonlat_projections():
    lon, lat = to_lonlat(448250.599, 5411951.599, 32631)  # Eiffel Tower, UTM 31N
    assert abs(lon - 2.2944813) < 1e-6 and abs(lat - 48.8583701) < 1e-6
    lon, lat = to_lonlat(500000.0, 10_000_000.0, 32733)  # the equator from the south
    assert abs(lon - 15.0) < 1e-9 and abs(lat) < 1e-9
    lon, lat = to_lonlat(20037508.342789244, 0.0, 3857)
    assert abs(lon - 180.0) < 1e-9 and abs(lat) < 1e-9
    assert to_lonlat(1.0, 2.0, 4326) == (1.0, 2.0) and to_lonlat(0, 0, 2154) is None


def test_a_collections_rule_reads_arrays_and_pil_images_as_it_reads_the_file(tmp_path,
                                                                            sample_images):
    """Under a rule other than the default, an array (``tifffile.imread``) or a 16-bit PIL image
    is read as the raster's samples, as the file is: the rule was ignored for them (bands 1-3
    of a B,G,R,NIR scene, the 16-bit range: nearly black, 20 of 32 bits off)."""
    rgb = scene(sample_images).astype(np.uint16) * 12
    bgrn = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 4000, np.uint16)], 2)
    path = tmp_path / "bgrn.tif"
    tifffile.imwrite(path, bgrn, photometric="minisblack", planarconfig="contig")
    rule = RasterRule.parse("bands=3,2,1;stretch=percentile")
    from_file = load_image(path, rule=rule)
    assert (load_image(tifffile.imread(path), rule=rule) == from_file).all()
    assert from_file.mean() > 60                       # stretched, not the dark 16-bit range
    gray = rgb[..., 0]
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    one = RasterRule.parse("stretch=percentile")
    assert (load_image(Image.fromarray(gray), rule=one)
            == load_image(tmp_path / "gray.tif", rule=one)).all()
    with pytest.raises(ImageLoadError, match="channels-first"):
        load_image(np.moveaxis(bgrn, -1, 0), rule=rule)
    assert (load_image(scene(sample_images)) == scene(sample_images)).all()  # default: as before
    # 8-bit RGB pixels (a decoded JPEG) are read by no rule, as the JPEG file is
    jpg = sample_images[0][0]
    for pixels in (scene(sample_images), Image.open(jpg)):
        assert (load_image(pixels, rule=rule) == load_image(jpg, rule=rule)).all()
