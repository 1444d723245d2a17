"""Test and benchmark helpers of the rsir-sdk checkout: not part of any distribution.

Why a package of its own, outside ``rsir_sdk``: the runtime wheel ships what applications use
and nothing else (``pyproject.toml`` packages ``rsir_sdk*`` only; ``tests/test_packaging.py``
checks it). The tests (``tests/conftest.py`` puts the checkout on ``sys.path``) and the scripts
in ``benchmarks/`` (``benchmarks/_common.py`` does) import these modules from the checkout:

* :mod:`testing.store_baseline`: bare pymilvus operations the store is measured and tested
  against (a benchmark's floor, a collection in an older layout, an error as pymilvus raises it);
* :mod:`testing.store_local_server`: a Milvus 2.3.5 server on this machine (PyPI ``milvus``).

Their names hold "store": pymilvus is imported only in files whose path says so.
"""
