"""rsir_sdk runs on an edge box: no torch, no onnx, no training code."""

import json
import subprocess
import sys
import textwrap

BLOCK_AND_ENCODE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        # make torch, onnx and the training code unimportable, as on an edge box without them
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "export", "rsir_train", "torchvision"):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Block())
    import rsir_sdk
    from rsir_sdk import Encoder
    enc = Encoder(sys.argv[1], threads=1)
    codes = enc.encode(sys.argv[2:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "export", "rsir_train"))
    print(json.dumps({"codes": codes.tolist(), "loaded": loaded}))
    """
)


def test_import_does_not_load_torch():
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys, json, rsir_sdk, rsir_sdk.cli, rsir_sdk.metrics;"
         "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('torch', 'onnx', 'export', 'rsir_train', 'pymilvus', 'onnxruntime'))))"],
        capture_output=True, text=True, check=True,
    )
    loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "onnx", "export", "rsir_train")], loaded


def test_encode_with_torch_and_onnx_absent(rp_bundle, sample_images):
    from rsir_sdk import Encoder

    files = [str(p) for p, _ in sample_images[:4]]
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_AND_ENCODE, str(rp_bundle[0]), *files],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["codes"] == Encoder(rp_bundle[0]).encode(files).tolist()


def test_runtime_wheel_holds_the_runtime_only(tmp_path):
    """`pip wheel .` gives a wheel whose only top-level package is rsir_sdk (with its page and
    py.typed), so a plain install carries no training code."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    str(root), "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("rsir_sdk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"rsir_sdk"}, top
    assert "rsir_sdk/py.typed" in names and "rsir_sdk/serve/static/index.html" in names
    assert not [n for n in names if "quantize" in n or n.endswith(".jpg")]
