"""The part layouts of the split and layout fine codes and their same-scene tests (issue 20).

Why a module of its own: these are facts about a bundle's fine code that code without torch
needs too (``benchmarks/similar_scale.py`` builds collections that record the layout's tests);
:mod:`rsir_train.fine_split`, which fits and exports the code, imports torch. Importing this
module imports neither torch nor onnx.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KIND_PARTS", "KIND_STEP", "LAYOUT_PARTS", "SPLIT_PARTS", "TEST_RATIOS",
           "TEST_WEIGHTS", "manifest_parts", "part_bits"]

#: the parts of a split code and their share of its bits: (name, share); the measured choice
SPLIT_PARTS = (("pooled", 0.25), ("t8", 0.25), ("t16r", 0.5))
#: the parts of a ``layout`` code: the split code's plus ``cl``, the colour layout (an 8 x 8
#: grid of r, g, b cell means divided by the image's mean luminance), which JPEG q70 and a
#: brightness change leave nearly unchanged (docs/similar.md, "A colour-layout part")
LAYOUT_PARTS = (("pooled", 0.2), ("t8", 0.2), ("cl", 0.2), ("t16r", 0.4))
#: the part layouts by fine-code kind, and the bits each kind's length must be a multiple of
KIND_PARTS = {"split": SPLIT_PARTS, "layout": LAYOUT_PARTS}
KIND_STEP = {"split": 32, "layout": 40}
#: the weights of each part in a kind's **same-scene tests** (ratio tests that put a re-encoded
#: or turned copy first, :class:`rsir_sdk.codes.SceneTest`), one weight per test: ``layout``
#: keeps the pooled part for the order inside a class but decides "the same scene" on ``t8 + 3
#: cl + t16r`` (eurosat's JPEG q70 copies back first 0.952 where the whole code gives 0.922,
#: ``export/scripts/colour_layout_part.py``) or on ``t16r`` alone, the rotation-invariant part
#: (without it a 90-degree turn falls to 0.888-0.964 in the top 10, with it 1.000, firing for
#: no more held-out queries; docs/similar.md). A kind absent here tests on the whole code.
TEST_WEIGHTS = {"layout": {"pooled": [0, 0], "t8": [1, 0], "cl": [3, 0], "t16r": [1, 1]}}
#: each test's factor (``d1 < ratio * d2``): the rotation test stricter, at 0.6, the middle of
#: the factors (0.5-0.7) that keep every turned copy in the top 10 without firing for more
#: held-out queries than the first test alone (0.8 fired for 1.2 % against 0.4 %; eurosat MiLAN,
#: draw 1, docs/similar.md)
TEST_RATIOS = {"layout": [0.8, 0.6]}


def part_bits(bits: int, kind: str = "split") -> list[tuple[str, int]]:
    """``[(part, bits)]`` of a ``bits``-bit code of ``kind`` (each a multiple of 8).

    >>> part_bits(256)
    [('pooled', 64), ('t8', 64), ('t16r', 128)]
    >>> part_bits(320, "layout")
    [('pooled', 64), ('t8', 64), ('cl', 64), ('t16r', 128)]
    """
    step = KIND_STEP[kind]
    if bits < step or bits % step:
        raise ValueError(f"a {kind} fine code needs a multiple of {step} bits, got {bits}")
    return [(name, int(bits * share)) for name, share in KIND_PARTS[kind]]


def manifest_parts(bits: int, kind: str) -> list[dict[str, Any]]:
    """The parts of a ``bits``-bit ``kind`` code as a manifest's ``fine_code.parts`` records
    them (``part``, ``bits`` and, for a kind with same-scene tests, ``test_weight``), for
    :meth:`rsir_sdk.codes.SceneTest.from_parts`.

    >>> [p["test_weight"] for p in manifest_parts(320, "layout")]
    [[0, 0], [1, 0], [3, 0], [1, 1]]
    """
    weights = TEST_WEIGHTS.get(kind)
    return [{"part": name, "bits": n, **({"test_weight": weights[name]} if weights else {})}
            for name, n in part_bits(bits, kind)]
