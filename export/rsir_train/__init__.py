"""Training side of rsir-sdk: archives and splits, backbones, AHCL training, ONNX export, bundles.

Imports torch (except :mod:`export.bundle` and :mod:`export.data`, which are torch-free).
The runtime package ``rsir_sdk`` never imports this package.
"""
