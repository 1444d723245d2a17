"""Every fp32 bundle's graph has its "same" padding folded into the convolutions at export
(rsir_train.onnx_export.export_onnx -> rsir_train.graph.fold_static_pads): no Pad feeds a Conv,
and the codes are those of the unfolded graph and of the torch network, on real images."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.train

from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_train.ahcl.model import AHCLNet  # noqa: E402
from rsir_train.backbones import build_backbone  # noqa: E402
from rsir_train.features import Normalize  # noqa: E402
from rsir_train.onnx_export import export_onnx, torch_outputs  # noqa: E402

BITS = 64


def _pads_before_convs(model) -> int:
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Conv"
               and n.input[0] in producer and producer[n.input[0]].op_type == "Pad")


def _run(model, images):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["embedding", "codes"], {"images": images})


@pytest.fixture(scope="module")
def lite0_net():
    """EfficientNet-Lite0 (ImageNet weights when installed, else random) with a seeded hash head."""
    try:
        backbone = build_backbone("efficientnet_lite0", pretrained=True)
    except Exception:  # the weights package is missing: the graph is the same
        backbone = build_backbone("efficientnet_lite0", pretrained=False)
    torch.manual_seed(0)
    net = AHCLNet(backbone, BITS, 10).eval()
    pre = backbone.preprocess
    return net, Normalize(pre["mean"], pre["std"])


def test_export_folds_every_pad_and_keeps_the_codes(lite0_net, sample_images):
    net, norm = lite0_net
    folded = export_onnx(net, norm, BITS, 224, 224)
    plain = export_onnx(net, norm, BITS, 224, 224, fold_pads=False)
    assert _pads_before_convs(plain) == 17  # what the exporter writes for Lite0's "same" convs
    assert _pads_before_convs(folded) == 0
    assert not [n for n in folded.graph.node if n.op_type == "Pad"]
    pre = {"resize": 256, "crop": [224, 224], "interpolation": "bilinear"}
    images = np.stack([prepare(load_image(p), pre) for p, _ in sample_images[::10]])
    u_f, c_f = _run(folded, images)
    u_p, c_p = _run(plain, images)
    u_t, c_t = torch_outputs(net, norm, BITS, images)
    assert np.abs(u_f - u_p).max() < 1e-5
    assert np.array_equal(c_f, c_p)
    assert np.abs(u_f - u_t).max() < 1e-4
    stable = np.abs(u_t) >= 1e-4
    bits_f = np.unpackbits(c_f, axis=1)[stable]
    assert np.array_equal(bits_f, np.unpackbits(c_t, axis=1)[stable])
    # batch 1 and batch 5 give the same rows (the folded amounts do not depend on the batch)
    u1, c1 = _run(folded, images[:1])
    assert np.array_equal(c1, c_f[:1]) and np.abs(u1 - u_f[:1]).max() < 1e-5
