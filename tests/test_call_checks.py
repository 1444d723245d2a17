"""`rsir_sdk.call_checks`: an `add_images` call's ids and paths, and a search's arguments, checked
the same way by `Retriever` (a real Milvus Lite file) and `RemoteRetriever` (refusing before it
sends anything, so no service is needed: the port is closed and nothing may reach it)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rsir_sdk import Retriever
from rsir_sdk.call_checks import check_search, images_with_ids
from rsir_sdk.errors import InvalidInputError
from rsir_sdk.serve.client import RemoteRetriever


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ids_and_paths_default_to_the_sources_that_are_paths(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "é b.jpg"
    images, ids, paths = images_with_ids((a, str(b)), None, None)
    assert images == [a, str(b)] and ids == [str(a), str(b)] and paths == [str(a), str(b)]
    images, ids, paths = images_with_ids([b"\xff", a], ["x", "y"], None)
    assert ids == ["x", "y"] and paths == ["", str(a)]
    assert images_with_ids([a], ["x"], ["given"])[2] == ["given"]


@pytest.mark.parametrize("images, ids, message", [
    ("one.jpg", None, "images must be a list (for one image pass [image])"),
    (b"\xff\xd8", None, "images must be a list"),
    ([Path("a.jpg"), b"\xff\xd8\xff"], None,
     "ids are required when some images are not file paths (e.g. <3 bytes>)"),
    ([Path("a.jpg"), Path("b.jpg")], ["x"], "2 images but 1 ids"),
    ([Path("a.jpg"), Path("b.jpg")], ["x", "x"], "repeated"),
    ([Path("a.jpg")], "x", "ids must be a list of strings"),
])
def test_bad_calls_get_one_line(images, ids, message):
    with pytest.raises(InvalidInputError) as err:
        images_with_ids(images, ids, None)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_search_arguments_are_checked_before_any_image():
    assert not check_search(5, {"label": "Forest"}, 3).active
    assert check_search(5, None, None, ((0, 0, 1, 1), None, None)).active
    for k, flt, radius, msg in ((0, None, None, "k"), (5, {"label": []}, None, "label"),
                                (5, None, -1, "radius"), (5, 5, None, "filter")):
        with pytest.raises(InvalidInputError, match=msg):
            check_search(k, flt, radius)


def test_both_classes_refuse_the_same_write_with_the_same_line(rp_bundle, tmp_path):
    bundle, _ = rp_bundle
    remote = RemoteRetriever(f"http://127.0.0.1:{_closed_port()}", retries=0, timeout=2)
    with Retriever(bundle, uri=str(tmp_path / "rsir.db"), collection="checks") as local:
        for images, ids in (([b"\xff\xd8\xff", tmp_path / "a.jpg"], None),
                            ([tmp_path / "a.jpg"], ["a", "b"]), ("a.jpg", None)):
            lines = []
            for r in (local, remote):
                with pytest.raises(InvalidInputError) as err:
                    r.add_images(images, ids=ids)
                lines.append(str(err.value))
            assert lines[0] == lines[1], lines
        assert not local.store.exists          # nothing was written, nothing created
    assert remote.bytes_sent == 0              # and nothing was sent
    remote.close()


def test_one_image_where_a_list_belongs_is_refused_by_both_classes(rp_bundle, tmp_path):
    # list("a.jpg") would search for images called "a", ".", "j", ...
    remote = RemoteRetriever(f"http://127.0.0.1:{_closed_port()}", retries=0, timeout=2)
    with Retriever(rp_bundle[0], uri=str(tmp_path / "rsir.db"), collection="checks") as local:
        for images in ("a.jpg", tmp_path / "a.jpg", b"\xff\xd8\xff"):
            lines = []
            for r in (local, remote):
                with pytest.raises(InvalidInputError) as err:
                    r.search_batch(images, k=3)
                lines.append(str(err.value))
            assert lines[0] == lines[1] == "images must be a list (for one image use search(image))"
    assert remote.bytes_sent == 0
    remote.close()


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1/", "http://", " "])
def test_a_service_url_without_http_is_refused_at_once(url):
    # it was retried as a network fault ("cannot reach ... after 4 attempts")
    with pytest.raises(InvalidInputError, match="url must start with http:// or https://"):
        RemoteRetriever(url, retries=3)


def test_delete_takes_a_list_and_batch_sizes_are_checked_everywhere(rp_bundle, sample_images,
                                                                     tmp_path):
    """delete("abc") deleted the items a, b and c (get("abc") and RemoteRetriever refused it);
    batch_size=-1 encoded nothing and returned no codes (encode, encode_both, search_batch)
    or failed later in other words (add_images): each is one InvalidInputError now."""
    import numpy as np

    from rsir_sdk import Encoder

    with Retriever(rp_bundle[0], uri=str(tmp_path / "d.db"), collection="d") as r:
        r.add_codes(np.zeros((4, 8), np.uint8), ["a", "b", "c", "abc"])
        for bad in ("abc", None, 5):
            with pytest.raises(InvalidInputError, match="ids must be a list of strings"):
                r.delete(bad)  # type: ignore[arg-type]
        assert r.count() == 4 and r.delete(["abc"]) == 1 and r.count() == 3
        images = [str(p) for p, _ in sample_images[:3]]
        for bad in (-1, 0, 1.5, "2", True):
            with pytest.raises(InvalidInputError, match="batch_size must be a positive integer"):
                r.search_batch(images, k=2, batch_size=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidInputError, match="batch_size"):
                r.add_images(images, batch_size=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidInputError, match="batch_size"):
                r.encoder.encode(images, batch_size=bad)  # type: ignore[arg-type]
        assert len(r.search_batch(images, k=2, batch_size=2)) == 3
    for kwargs in ({"batch_size": 0}, {"url_timeout": -1}, {"threads": -1}):
        with pytest.raises(InvalidInputError):
            Encoder(rp_bundle[0], **kwargs)


def test_misused_calls_are_one_line_of_the_documented_classes(rp_bundle, tmp_path, capfd,
                                                             caplog):
    """A probe following the docs met raw TypeErrors (Retriever(None), encode(None)), a
    range_search(q, None) that returned every item, onnxruntime's own banner for an unknown
    provider, and a fine code of the wrong length reported as "codes"."""
    import logging

    import numpy as np

    from rsir_sdk import BundleError, CodeLengthError, Encoder

    for bad in (None, 5):
        with pytest.raises(BundleError, match="a bundle is a folder path"):
            Retriever(bad, uri=str(tmp_path / "x.db"))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="rsir_sdk"):
        enc = Encoder(rp_bundle[0], providers=["FooProvider", "CPUExecutionProvider"])
    assert enc.providers == ["CPUExecutionProvider"]
    assert "onnxruntime here has no FooProvider" in caplog.text
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err and "UserWarning" not in out + err
    with pytest.raises(InvalidInputError, match="images must be an image or a list"):
        enc.encode(None)  # type: ignore[arg-type]
    with Retriever(rp_bundle[0], uri=str(tmp_path / "r.db"), collection="r") as r:
        r.add_codes(np.zeros((2, 8), np.uint8), ["a", "b"])
        with pytest.raises(InvalidInputError, match="range_search needs a radius"):
            r.range_search(np.zeros((8, 8, 3), np.uint8), None)  # type: ignore[arg-type]
    r2 = Retriever(rp_bundle[0], uri=str(tmp_path / "r.db"), collection="r")
    r2.close()
    with pytest.raises(Exception, match="open a new Retriever or store"):
        r2.count()
    from rsir_sdk.codes import as_packed

    with pytest.raises(CodeLengthError, match="^fine codes are 64 bits"):
        as_packed(np.zeros((1, 8), np.uint8), 128, "fine codes")


def test_one_image_where_a_list_belongs_is_refused_not_split():
    """An HxWx3 array given to add_images / search_batch was split into H row "images" (64
    items written for one picture); a PIL image raised a bare TypeError; a file object was
    split into its lines."""
    import io

    import numpy as np
    from PIL import Image

    from rsir_sdk.call_checks import image_list

    one = np.zeros((64, 64, 3), np.uint8)
    for single in (one, one[..., 0], Image.fromarray(one), io.BytesIO(b"x"), memoryview(b"x"),
                   "a.jpg", b"\xff\xd8"):
        with pytest.raises(InvalidInputError, match=r"images must be a list \(for one image pass"):
            image_list(single, "pass [image]")
    with pytest.raises(InvalidInputError, match="not int"):
        image_list(7, "pass [image]")
    assert len(image_list(np.zeros((5, 8, 8, 3), np.uint8), "pass [image]")) == 5  # a batch
    assert len(image_list(np.zeros((5, 8, 8), np.uint8), "pass [image]")) == 5  # gray stack
    paths = np.array(["a.jpg", "b.jpg"])                    # df["path"].values
    assert image_list(paths, "pass [image]") == ["a.jpg", "b.jpg"]
    assert image_list(paths.astype(object), "pass [image]") == ["a.jpg", "b.jpg"]
    assert len(image_list([one, one], "pass [image]")) == 2
