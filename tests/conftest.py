"""Shared fixtures: the shipped EuroSAT sample, real image files in several formats, bundles."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "export" / "rsir_train" / "sample" / "eurosat"
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:  # the checkout's ``testing`` helpers (not in any wheel)
    sys.path.insert(1, str(ROOT))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The EuroSAT sample shipped with the project (10 classes x 20 real 64x64 JPEGs)."""
    assert SAMPLE.is_dir(), f"missing {SAMPLE}"
    return SAMPLE


@pytest.fixture(scope="session")
def sample_images(sample_dir) -> list[tuple[Path, str]]:
    """(path, label) of every sample image, sorted."""
    out = []
    for cls in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
        out += [(f, cls.name) for f in sorted(cls.glob("*.jpg"))]
    return out


@pytest.fixture(scope="session")
def format_files(tmp_path_factory, sample_images) -> dict[str, Path]:
    """Real sample scenes re-saved as PNG, JPEG, TIFF, grayscale, RGBA, palette and 16-bit files."""
    d = tmp_path_factory.mktemp("formats")
    rgb = Image.open(sample_images[0][0]).convert("RGB")
    other = Image.open(sample_images[25][0]).convert("RGB")
    files = {"jpeg": sample_images[0][0]}
    rgb.save(d / "scene.png"); files["png"] = d / "scene.png"
    other.save(d / "scene.tif"); files["tiff"] = d / "scene.tif"
    rgb.convert("L").save(d / "gray.png"); files["gray"] = d / "gray.png"
    rgba = other.copy(); rgba.putalpha(128); rgba.save(d / "rgba.png"); files["rgba"] = d / "rgba.png"
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png"); files["palette"] = d / "palette.png"
    gray16 = np.asarray(rgb.convert("L"), np.uint16) * 257 + 3
    Image.fromarray(gray16).save(d / "gray16.png"); files["gray16"] = d / "gray16.png"
    Image.fromarray(gray16).save(d / "gray16.tif"); files["gray16_tiff"] = d / "gray16.tif"
    return files


@pytest.fixture(scope="session")
def rp_bundle(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 64-bit random-projection bundle (32x32 input) built with onnx.helper, and its weights."""
    from onnx_models import build_random_projection_bundle

    out = tmp_path_factory.mktemp("bundles") / "rp64"
    weight = build_random_projection_bundle(out, bits=64, size=32, seed=0)
    return out, weight


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: more torch threads only add contention."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def db_uri(tmp_path) -> str:
    """A fresh Milvus Lite database file."""
    return str(tmp_path / "rsir.db")


@pytest.fixture(scope="session")
def tiny_ahcl(tmp_path_factory):
    """A real AHCL bundle trained once per session (small_cnn on the shipped sample, 32 bits).

    Returns ``(bundle_dir, result, manifest)``; needs the training package (torch).
    """
    pytest.importorskip("torch")
    import torch

    from rsir_train.testing import tiny_ahcl_bundle

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_ahcl") / "bundle"
    result, manifest = tiny_ahcl_bundle(out, bits=32)
    return out, result, manifest


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory):
    """A real Milvus 2.3.5 server (PyPI ``milvus``, embedded standalone) on 127.0.0.1, started
    once for every test of the session that asks for it (about 10 s) and stopped at the end.

    Its data live in a temporary folder (about 0.5 GB: the package unpacks its binaries there);
    every port of it a free one (:mod:`testing.store_local_server`). Tests use their
    own collection names.
    """
    pytest.importorskip("milvus")
    from testing.store_local_server import local_server

    data_dir = tmp_path_factory.mktemp("milvus-server")
    try:
        # the query coordinator hands sealed segments over every second (default 5-10 s):
        # tests wait for that hand-over and assert on states, not times
        with local_server(data_dir, quick_handoff=True) as server:
            print(f"Milvus server 2.3.5 started in {server.started_s:.1f}s at {server.uri}")
            yield server.uri
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
