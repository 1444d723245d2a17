"""Read and validate a model bundle: ``model.onnx`` + ``manifest.json`` (+ ``database.npz``).

The bundle is the one contract between training (``export/``) and this runtime; the format
is described in ``docs/bundle.md``. Everything the SDK needs is read from it, and every
missing or inconsistent field is reported by name in a :class:`~rsir_sdk.errors.BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .codes import SceneTest, as_packed
from .errors import BundleError, CodeLengthError
from .manifest_fields import FORMAT_VERSION as FORMAT_VERSION
from .manifest_fields import INTERPOLATIONS as INTERPOLATIONS
from .manifest_fields import MANIFEST_FILE as MANIFEST_FILE
from .manifest_fields import MODEL_FILE as MODEL_FILE
from .manifest_fields import PREPROCESS_FIELDS as PREPROCESS_FIELDS
from .manifest_fields import fine_fields, preparation, read_fields, read_scene_test, require

if TYPE_CHECKING:  # pragma: no cover
    from .splits import Split

log = logging.getLogger(__name__)

DATABASE_FILE = "database.npz"


@dataclass(frozen=True)
class DatabaseCodes:
    """Database codes shipped in a bundle (AHCL's learned V), with their ids, labels, paths,
    and (bundles written since issue 20) the fine codes of the same images."""

    codes: np.ndarray  # uint8 (n, bits/8)
    ids: list[str]
    labels: list[str]
    paths: list[str]
    kind: str = "learned"
    #: the database images' fine codes ``uint8 (n, fine_bits/8)``, computed at export time by
    #: the same network (docs/bundle.md); None for bundles written before them
    fine: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle.

    >>> b = Bundle.load("bundle/")          # doctest: +SKIP
    >>> b.method, b.bits, b.encoder_id      # doctest: +SKIP
    ('ahcl', 64, '3f2a9c0e1b7d4a55')
    """

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    method: str
    bits: int
    code_threshold: float
    input_height: int
    input_width: int
    input_name: str
    embedding_output: str
    codes_output: str
    preprocess: dict[str, Any] = field(repr=False)
    classes: list[str] = field(repr=False)
    model_sha256: str = field(repr=False)
    #: the fine code's length in bits (issue 20, docs/bundle.md); None: the bundle has none
    fine_bits: int | None = None
    #: the graph output holding the packed fine codes; None when the bundle has none
    fine_output: str | None = None
    #: the parts of the fine code its same-scene test reads (``fine_code.parts[].test_weight``,
    #: ``--fine-code layout``); None: the test reads the whole fine code
    scene_test: SceneTest | None = field(default=None, repr=False)

    @property
    def model_path(self) -> Path:
        """Path of the ONNX encoder."""
        return self.path / self.manifest["model_file"]

    @property
    def encoder_id(self) -> str:
        """Short identity of the encoder (first 16 hex of the model's sha256)."""
        return self.model_sha256[:16]

    @property
    def archive_root(self) -> str | None:
        """The folder of the archive the bundle was trained on, as the manifest records it.

        Reads ``archive.root`` (written by :func:`rsir_sdk.bundle_writer.write_bundle`), then
        the older ``training.archive_root`` / ``training.data_root`` / ``training.data`` fields
        and the ``--data`` argument of ``training.command``. ``None`` when nothing is recorded.
        """
        archive = self.manifest.get("archive")
        if isinstance(archive, dict) and isinstance(archive.get("root"), str) and archive["root"]:
            return archive["root"]
        training = self.manifest.get("training") or {}
        for key in ("archive_root", "data_root", "data"):
            value = training.get(key)
            if isinstance(value, str) and value:
                return value
        command = training.get("command")
        if isinstance(command, str):
            try:
                words = shlex.split(command)
            except ValueError:
                words = []
            for i, w in enumerate(words):
                if w == "--data" and i + 1 < len(words):
                    return words[i + 1]
                if w.startswith("--data="):
                    return w.split("=", 1)[1]
        return None

    @property
    def archive_source(self) -> str | None:
        """What to list to get the bundle's archive back: the CSV manifest it was trained from
        when the manifest records one, else :attr:`archive_root` (a folder, ``root/<class>/``)."""
        archive = self.manifest.get("archive")
        if isinstance(archive, dict) and isinstance(archive.get("manifest"), str) and archive["manifest"]:
            return archive["manifest"]
        return self.archive_root

    def split(self) -> "Split":
        """The train/query split the bundle was trained on (its ``split.json``)."""
        from .splits import load_split

        return load_split(self.path)

    @property
    def has_database(self) -> bool:
        """True when the bundle ships database codes (AHCL's learned V)."""
        return bool(self.manifest.get("database"))

    @property
    def symmetric(self) -> bool:
        """True when the database is encoded by the same network as queries (MiLAN)."""
        return bool(self.manifest.get("symmetric", not self.has_database))

    @property
    def default_collection(self) -> str:
        """The collection name used when none is given: ``<method>_<bits>_<encoder_id>``."""
        return re.sub(r"[^A-Za-z0-9_]", "_", f"{self.method}_{self.bits}_{self.encoder_id}")

    def identity(self) -> dict[str, Any]:
        """What a Milvus collection records about the encoder that filled it: the model's
        identity, and how the manifest prepares images for it (``preprocess``: the model's
        bytes do not cover the manifest, so a collection refuses codes of the same model fed
        differently resized or cropped images; collections made before it record none)."""
        return {"encoder_id": self.encoder_id, "bits": self.bits, "method": self.method,
                "preprocess": preparation(self.preprocess)}

    def load_database(self) -> DatabaseCodes:
        """Load the bundle's database codes; :class:`BundleError` when it has none or they are bad."""
        spec = self.manifest.get("database")
        if not spec:
            raise BundleError(
                f"bundle {self.path} has no database codes (manifest 'database' is empty): "
                f"encode the archive with the encoder instead (Retriever.add_images / rsir index)"
            )
        file = self.path / require(spec, "file", "database", self.path)
        if not file.is_file():
            raise BundleError(f"bundle {self.path}: database file {file.name} is missing")
        self._check_database_hash(file, spec)
        try:
            with np.load(file, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as exc:  # BadZipFile, zlib.error, EOFError, OSError, ValueError...
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise BundleError(
                f"bundle {self.path}: {file} cannot be read ({type(exc).__name__}"
                f"{': ' + reason if reason else ''}): the file is damaged; write the bundle again"
            ) from None
        for key in ("codes", "ids"):
            if key not in data:
                raise BundleError(f"bundle {self.path}: {file.name} has no '{key}' array")
        try:
            codes = as_packed(data["codes"], self.bits)
        except CodeLengthError as exc:
            raise BundleError(f"bundle {self.path}: database codes: {exc}") from None
        n = codes.shape[0]
        ids = [str(x) for x in data["ids"].tolist()]
        labels = [str(x) for x in data["labels"].tolist()] if "labels" in data else [""] * n
        paths = [str(x) for x in data["paths"].tolist()] if "paths" in data else [""] * n
        for key, arr in (("ids", ids), ("labels", labels), ("paths", paths)):
            if len(arr) != n:
                raise BundleError(
                    f"bundle {self.path}: {file.name} holds {n} codes but {len(arr)} {key}"
                )
        if len(set(ids)) != n:
            raise BundleError(f"bundle {self.path}: {file.name} has duplicate ids")
        if "count" in spec and int(spec["count"]) != n:
            raise BundleError(
                f"bundle {self.path}: manifest database.count is {spec['count']} but "
                f"{file.name} holds {n} codes"
            )
        if spec.get("fine_bits") and "fine" not in data:
            raise BundleError(f"bundle {self.path}: manifest database.fine_bits is "
                              f"{spec['fine_bits']} but {file.name} has no 'fine' array")
        return DatabaseCodes(codes, ids, labels, paths, str(spec.get("codes", "learned")),
                             self._database_fine(data.get("fine"), n, file.name))

    def _database_fine(self, raw: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
        """The database's ``fine`` array checked against the bundle's fine code (None when the
        file has none: written before issue 20)."""
        if raw is None:
            return None
        if self.fine_bits is None:
            raise BundleError(f"bundle {self.path}: {name} holds fine codes but the manifest "
                              f"records no fine_code: write the bundle again")
        try:
            fine = as_packed(raw, self.fine_bits)
        except CodeLengthError as exc:
            raise BundleError(f"bundle {self.path}: database fine codes: {exc}") from None
        if fine.shape[0] != n:
            raise BundleError(f"bundle {self.path}: {name} holds {n} codes but "
                              f"{fine.shape[0]} fine codes")
        return fine

    def _check_database_hash(self, file: Path, spec: dict[str, Any]) -> None:
        """Refuse database codes that differ from those the bundle was written with.

        The learned codes are part of what the encoder id stands for (they are indexed under
        it), so they are checked against ``database.sha256`` like the model against
        ``model_sha256``. Bundles written before the hash existed load with a log line.
        """
        declared = spec.get("sha256")
        if declared is None:
            log.warning("bundle %s: %s records no database.sha256 (written by an older "
                        "rsir-sdk): %s is loaded without an integrity check", self.path,
                        MANIFEST_FILE, file.name)
            return
        if not isinstance(declared, str) or len(declared) != 64:
            raise BundleError(f"bundle {self.path}: {MANIFEST_FILE} field 'database.sha256' must "
                              f"be a 64-digit hex sha256, got {declared!r}")
        if file_sha256(file) != declared.lower():
            raise BundleError(
                f"bundle {self.path}: {file} does not match {MANIFEST_FILE}'s database.sha256 "
                f"(the learned codes changed after the bundle was written): refusing them; "
                f"restore the file or write the bundle again")

    @classmethod
    def load(cls, path: str | os.PathLike, verify_hash: bool = True) -> "Bundle":
        """Read and validate the bundle folder at ``path``."""
        if not isinstance(path, (str, os.PathLike)):
            raise BundleError(f"a bundle is a folder path, got {type(path).__name__} {path!r:.40}")
        root = Path(path)
        if not root.exists():
            raise BundleError(f"bundle folder {root} does not exist")
        if not root.is_dir():
            raise BundleError(f"bundle {root} is not a folder (expected model.onnx + manifest.json)")
        mpath = root / MANIFEST_FILE
        if not mpath.is_file():
            raise BundleError(f"bundle {root} has no {MANIFEST_FILE}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"bundle {root}: {MANIFEST_FILE} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"bundle {root}: {MANIFEST_FILE} must hold a JSON object")

        try:
            fields = read_fields(root, manifest)
        except BundleError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise BundleError(f"bundle {root}: {MANIFEST_FILE} has a field of the wrong type or "
                              f"value ({type(exc).__name__}: {exc})") from None
        method, bits, model_file, height, width, inp, pre, outputs, declared = fields
        fine_bits, fine_output = fine_fields(root, manifest, outputs)
        scene_test = read_scene_test(root, manifest, fine_bits)
        model_path = root / model_file
        if not model_path.is_file():
            raise BundleError(f"bundle {root}: model file {model_file} is missing")
        actual = file_sha256(model_path) if verify_hash else declared
        if actual != declared:
            raise BundleError(
                f"bundle {root}: {model_file} does not match the manifest's model_sha256 "
                f"(the model was replaced or the manifest belongs to another bundle)"
            )
        bundle = cls(
            path=root,
            manifest=manifest,
            method=method,
            bits=bits,
            code_threshold=float(manifest.get("code_threshold", 0.0)),
            input_height=height,
            input_width=width,
            input_name=str(inp.get("name", "images")),
            embedding_output=str(outputs.get("embedding", "embedding")),
            codes_output=str(outputs.get("codes", "codes")),
            preprocess=dict(pre),
            classes=[str(c) for c in manifest.get("classes", [])],
            model_sha256=actual,
            fine_bits=fine_bits,
            fine_output=fine_output,
            scene_test=scene_test,
        )
        if bundle.has_database:
            require(manifest["database"], "file", "database", root)
        return bundle


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (the identity of a bundle's model.onnx)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
