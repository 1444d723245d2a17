"""A bundle exported from a real torch model, served by the runtime: Encoder parity on real
files in several formats, learned database codes into Milvus Lite as learned, labelled hits."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from rsir_sdk import Bundle, Encoder, Retriever  # noqa: E402
from rsir_sdk.archive import open_archive  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_train.onnx_export import ImageHashEncoder  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402


def torch_reference(result, prepared: np.ndarray):
    model = ImageHashEncoder(result.net, result.normalize, result.config.bits).eval()
    with torch.no_grad():
        u, codes = model(torch.from_numpy(prepared))
    return u.numpy(), codes.numpy()


def test_encoder_matches_torch_on_many_formats(tiny_ahcl, format_files, sample_images):
    path, result, _ = tiny_ahcl
    bundle = Bundle.load(path)
    assert (bundle.method, bundle.bits, bundle.has_database) == ("ahcl", 32, True)
    sources = list(format_files.values()) + [p for p, _ in sample_images[::23]]
    enc = Encoder(bundle)
    got = enc.encode(sources, batch_size=3, return_embeddings=True)
    prepared = np.stack([prepare(load_image(s), bundle.preprocess) for s in sources])
    u, ref_codes = torch_reference(result, prepared)
    assert np.abs(got.embeddings - u).max() < 1e-4
    stable = np.abs(u) >= 1e-4
    assert (np.unpackbits(got.codes, axis=1)[stable] == np.unpackbits(ref_codes, axis=1)[stable]).all()


def test_learned_codes_go_in_as_learned_and_hits_have_labels(tiny_ahcl, tmp_path):
    path, result, _ = tiny_ahcl
    bundle = Bundle.load(path)
    db = bundle.load_database()
    with Retriever(bundle, uri=str(tmp_path / "r.db"), collection="learned") as r:
        assert r.add_learned_codes() == len(db)
        stored = r.store.get(db.ids[:20])
        assert all((s.code == c).all() for s, c in zip(stored, db.codes[:20]))
        assert [s.label for s in stored] == db.labels[:20]
        # query split images (never in the database) come back with their own label on top
        archive = open_archive(SAMPLE_ARCHIVE, label_from="top")
        _, q_idx = bundle.split().indices(archive)
        queries = [archive.items[i].file for i in q_idx]
        labels = [archive.items[i].label for i in q_idx]
        hits = r.search_batch(queries, k=5)
    assert not set(db.ids) & {archive.items[i].id for i in q_idx}
    # the bundle records its archive: stored paths point at the images (galleries show them)
    from pathlib import Path

    assert all(Path(h.path).is_file() for h in hits[0])
    top1 = np.mean([h[0].label == l for h, l in zip(hits, labels)])
    p5 = np.mean([[x.label == l for x in h] for h, l in zip(hits, labels)])
    assert top1 >= 0.4 and p5 >= 0.3, (top1, p5)   # chance is 0.1 (10 balanced classes)
