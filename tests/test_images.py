"""The image loader on real files in many formats, arrays, and real HTTP downloads."""

import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from rsir_sdk.errors import ImageLoadError
from rsir_sdk.images import load_image


@pytest.fixture(scope="module")
def http_base(sample_images):
    """A real HTTP server on 127.0.0.1 serving one JPEG, a 404 and an oversized body."""
    jpeg = sample_images[0][0].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/scene.jpg":
                body = jpeg
            elif self.path == "/big.jpg":
                body = b"\xff" * 300_000
            elif self.path == "/notimage":
                body = b"<html>hello</html>"
            else:
                self.send_response(404); self.end_headers(); return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_format_becomes_rgb_uint8(format_files):
    for name, path in format_files.items():
        arr = load_image(path)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
        assert arr.shape[:2] == (64, 64), name


def test_documented_conversions(format_files):
    rgb = np.asarray(Image.open(format_files["png"]).convert("RGB"))
    gray = load_image(format_files["gray"])
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # 16-bit: value * 255 // 65535; the file holds L * 257 + 3 so this returns L exactly
    g16 = load_image(format_files["gray16"])
    expected = np.asarray(Image.open(format_files["png"]).convert("L"))
    assert (g16[..., 0] == expected).all()
    assert (load_image(format_files["gray16_tiff"])[..., 0] == expected).all()
    # RGBA: alpha dropped, colour values kept
    rgba = np.asarray(Image.open(format_files["rgba"]))
    assert (load_image(format_files["rgba"]) == rgba[..., :3]).all()
    assert (load_image(format_files["png"].read_bytes()) == rgb).all()
    with open(format_files["png"], "rb") as fh:
        assert (load_image(fh) == rgb).all()
    assert (load_image(Image.open(format_files["png"])) == rgb).all()


def test_arrays():
    assert load_image(np.full((3, 4), 7, np.uint8)).shape == (3, 4, 3)
    f = load_image(np.full((2, 2, 3), 0.5, np.float32))
    assert (f == 128).all()
    assert (load_image(np.full((2, 2), 65535, np.uint16)) == 255).all()
    assert load_image(np.zeros((2, 2, 4), np.uint8)).shape == (2, 2, 3)
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 2.0))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 5), np.uint8))


def test_integer_arrays_of_a_guessed_range_are_refused_not_read_black():
    """An int64 array of 0..255 values (integer arithmetic on an image) was read as 16-bit
    data: every pixel 0, and a search returned the black image's neighbours."""
    eight_bit = np.random.default_rng(0).integers(1, 256, (8, 8, 3))
    for dtype in (np.int64, np.int32, np.int16, np.int8, np.uint32, np.uint64):
        with pytest.raises(ImageLoadError, match=f"{np.dtype(dtype)} array: give uint8"):
            load_image(eight_bit.astype(dtype))
    assert (load_image(eight_bit.astype(np.uint8)) == eight_bit).all()
    with pytest.raises(ImageLoadError, match="mode I.*values up to 255.*convert"):
        load_image(Image.fromarray(np.full((4, 4), 255, np.int32), mode="I"))
    sixteen = Image.fromarray(np.full((4, 4), 65535, np.int32), mode="I")  # a 16-bit PNG, widened
    assert (load_image(sixteen) == 255).all()
    assert (load_image(Image.fromarray(np.zeros((4, 4), np.int32), mode="I")) == 0).all()


def test_a_file_opened_in_text_mode_is_named_not_a_type_error(sample_images, tmp_path):
    path = sample_images[0][0]
    with open(path, encoding="latin-1") as fh:
        with pytest.raises(ImageLoadError, match="text mode.*'rb'"):
            load_image(fh)

    class TextReader:  # a file-like object that is not an io.TextIOBase
        name = "reader"

        def read(self, n=-1):
            return "abcd"

    with pytest.raises(ImageLoadError, match="gives text, not bytes"):
        load_image(TextReader())


def test_bad_files_raise_image_load_error_naming_them(tmp_path, sample_images):
    empty = tmp_path / "empty.jpg"; empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"; text.write_text("not an image")
    trunc = tmp_path / "trunc.jpg"; trunc.write_bytes(sample_images[0][0].read_bytes()[:300])
    for path, reason in [(empty, "empty"), (text, "supported format"), (trunc, "corrupt"),
                         (tmp_path / "missing.png", "no such file"), (tmp_path, "not a file")]:
        with pytest.raises(ImageLoadError, match=reason) as err:
            load_image(path)
        assert str(path) in str(err.value) and err.value.source == str(path)
    with pytest.raises(ImageLoadError, match="ftp"):
        load_image("ftp://example.org/x.jpg")
    with pytest.raises(ImageLoadError, match="0 bytes"):
        load_image(b"")


def test_pixel_limit(sample_images):
    with pytest.raises(ImageLoadError, match="pixel limit"):
        load_image(sample_images[0][0], max_pixels=100)


def test_urls(http_base, sample_images):
    local = {"allow_private_urls": True}   # the test server is on loopback: opt in
    img = load_image(f"{http_base}/scene.jpg", **local)
    assert (img == load_image(sample_images[0][0])).all()
    with pytest.raises(ImageLoadError, match="404"):
        load_image(f"{http_base}/missing.jpg", **local)
    with pytest.raises(ImageLoadError, match="limit"):
        load_image(f"{http_base}/big.jpg", max_url_bytes=100_000, **local)
    with pytest.raises(ImageLoadError, match="supported format"):
        load_image(f"{http_base}/notimage", **local)
    with pytest.raises(ImageLoadError, match="download failed"):
        load_image("http://127.0.0.1:9/unreachable.jpg", url_timeout=2, **local)


def test_private_addresses_are_opt_in(http_base):
    """Loopback, private and link-local hosts are refused unless allowed (an SSRF guard);
    the refusal comes before any connection, and names the URL with its password redacted."""
    port = http_base.rsplit(":", 1)[1]
    for url in (f"{http_base}/scene.jpg", f"http://localhost:{port}/scene.jpg",
                f"http://user:hunter2@127.0.0.1:{port}/scene.jpg", "http://10.1.2.3/x.jpg",
                "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x.jpg",
                "http://[::ffff:127.0.0.1]:9/x.jpg", "http://0.0.0.0:9/x.jpg"):
        with pytest.raises(ImageLoadError, match="private, loopback or link-local") as err:
            load_image(url, url_timeout=5)
        assert "hunter2" not in str(err.value)
        assert "allow_private_urls=True" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ImageLoadError) as err:
        load_image(f"http://user:hunter2@127.0.0.1:{port}/scene.jpg")
    assert err.value.source == f"http://***@127.0.0.1:{port}/scene.jpg"
    with pytest.raises(ImageLoadError) as err:   # a raw "@" inside the password
        load_image("http://user:hun@ter2@10.0.0.1/x.jpg")
    assert err.value.source == "http://***@10.0.0.1/x.jpg" and "ter2" not in str(err.value)


def test_a_link_to_itself_is_named_a_loop_not_a_broken_link(tmp_path):
    from rsir_sdk.errors import ImageLoadError
    from rsir_sdk.images import load_image

    (tmp_path / "self.jpg").symlink_to("self.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "moved.jpg")
    with pytest.raises(ImageLoadError, match="a symbolic link loop"):
        load_image(tmp_path / "self.jpg")
    with pytest.raises(ImageLoadError, match="a broken link"):
        load_image(tmp_path / "gone.jpg")


def test_a_retriever_fetches_intranet_urls_when_it_is_allowed_to(http_base, rp_bundle, tmp_path):
    """The refusal named allow_private_urls=True, which only Encoder takes: a Retriever's
    user could not tell how to search an intranet image server."""
    from rsir_sdk import Retriever

    url = f"{http_base}/scene.jpg"
    with Retriever(rp_bundle[0], uri=str(tmp_path / "u.db"), collection="u") as r:
        r.encoder.allow_private_urls = True                  # the way the refusal names
        r.add_images([url], ids=["scene"])
        assert r.search(url, k=1)[0].id == "scene"
    with Retriever(rp_bundle[0], uri=str(tmp_path / "u.db"), collection="u") as r:
        with pytest.raises(ImageLoadError, match="r.encoder.allow_private_urls = True"):
            r.search(url, k=1)
