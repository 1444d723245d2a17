"""``Encoder``: a bundle's ONNX model in an onnxruntime session, from images to packed codes.

Provider choice: CUDA when onnxruntime offers it, else CPU; :attr:`Encoder.providers` says
what actually runs, and a fall-back from a requested GPU provider to the CPU is logged as a
warning so it is never silent.

Images are read by :func:`rsir_sdk.images.read_image` with the encoder's raster rule (TIFFs),
then resized and cropped by :func:`rsir_sdk.preprocess.prepare` as the bundle records.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence, overload

import numpy as np

from .bundle import Bundle
from .codes import as_packed
from .errors import BundleError, InvalidInputError
from .images import DEFAULT_URL_TIMEOUT, ImageSource, RuleLike, read_image
from .pixels import Raster
from .preprocess import prepare
from .rasters import RasterRule, as_rule

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("CUDAExecutionProvider",)


@dataclass(frozen=True)
class Encoded:
    """Result of :meth:`Encoder.encode` with ``return_embeddings=True`` and of
    :meth:`Encoder.encode_both` (which fills ``fine`` too, from the same session run)."""

    codes: np.ndarray  # uint8 (n, bits/8)
    embeddings: np.ndarray  # float32 (n, bits)
    #: packed fine codes ``uint8 (n, fine_bits/8)`` (issue 20); None when not asked for
    fine: np.ndarray | None = None


def default_providers() -> list[str]:
    """CUDA then CPU when onnxruntime has the CUDA provider, else CPU alone."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in GPU_PROVIDERS if p in available]
    return chosen + ["CPUExecutionProvider"]


class Encoder:
    """Encode images into packed binary codes with a bundle's ONNX model.

    >>> enc = Encoder("bundle/")                          # doctest: +SKIP
    >>> enc.encode(["a.jpg", "b.png"]).shape              # doctest: +SKIP
    (2, 8)
    >>> enc.providers                                     # doctest: +SKIP
    ['CPUExecutionProvider']

    ``raster_rule`` converts TIFF samples (see :mod:`rsir_sdk.rasters`); a collection records
    the rule it was filled with, and :class:`~rsir_sdk.Retriever` passes it here.

    Image URLs are downloaded within ``url_timeout`` seconds in all (connect, headers and
    body); hosts at private, loopback or link-local addresses only with
    ``allow_private_urls=True`` (see :mod:`rsir_sdk.urlfetch`).
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        *,
        raster_rule: RuleLike = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        url_timeout: float = DEFAULT_URL_TIMEOUT,
        allow_private_urls: bool = False,
    ):
        import onnxruntime as ort

        if isinstance(url_timeout, bool) or not isinstance(url_timeout, (int, float)) \
                or not url_timeout > 0:
            raise InvalidInputError(f"url_timeout must be a positive number of seconds, got "
                                    f"{url_timeout!r}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.raster_rule: RasterRule = as_rule(raster_rule)
        self.url_timeout = float(url_timeout)
        self.allow_private_urls = bool(allow_private_urls)
        self.batch_size = _batch_size(batch_size, 32)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 0):
            raise InvalidInputError(f"threads must be an integer >= 0 (0: onnxruntime's "
                                    f"choice), got {threads!r}")
        requested = _known_providers(providers) if providers else default_providers()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        # the session is made from the very bytes whose sha256 is the encoder's identity: a
        # model that points to external weight files cannot load them, so nothing outside the
        # hash can change the codes
        try:
            model_bytes = self.bundle.model_path.read_bytes()
        except OSError as exc:
            raise BundleError(f"bundle {self.bundle.path}: cannot read the model: {exc}") from None
        if hashlib.sha256(model_bytes).hexdigest() != self.bundle.model_sha256:
            raise BundleError(
                f"bundle {self.bundle.path}: {self.bundle.model_path.name} changed since the "
                f"bundle was loaded (it no longer matches model_sha256)"
            )
        try:
            # onnxruntime prints "EP Error" banners and warns when a provider fails to start:
            # the warning below says which provider runs instead, in one line
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.session = ort.InferenceSession(
                    model_bytes, sess_options=options, providers=requested
                )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
            hint = (" (the model refers to external weight files; an rsir bundle keeps every "
                    "weight inside model.onnx: rewrite it with rsir_sdk.bundle_writer.write_bundle)"
                    if "external" in str(exc).lower() else "")
            raise BundleError(
                f"bundle {self.bundle.path}: onnxruntime cannot load "
                f"{self.bundle.model_path.name}: {str(exc).strip().splitlines()[0][:300]}{hint}"
            ) from None
        del model_bytes
        self.providers: list[str] = list(self.session.get_providers())
        lost_gpu = [p for p in requested if p in GPU_PROVIDERS and p not in self.providers]
        if lost_gpu:
            log.warning(
                "%s requested but not usable here; encoding runs on %s",
                ", ".join(lost_gpu),
                ", ".join(self.providers),
            )
        elif not any(p in GPU_PROVIDERS for p in self.providers):
            log.info("encoding on the CPU (%s)", ", ".join(self.providers))
        self._check_graph()

    @property
    def bits(self) -> int:
        """Code length in bits."""
        return self.bundle.bits

    @property
    def fine_bits(self) -> int | None:
        """Length of the bundle's fine code in bits (docs/bundle.md), None when it has none."""
        return self.bundle.fine_bits

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the model input."""
        return self.bundle.input_height, self.bundle.input_width

    def _check_graph(self) -> None:
        b = self.bundle
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if b.input_name not in inputs:
            raise BundleError(
                f"bundle {b.path}: model has no input '{b.input_name}' (it has {sorted(inputs)})"
            )
        for name in (b.codes_output, b.embedding_output):
            if name not in outputs:
                raise BundleError(
                    f"bundle {b.path}: model has no output '{name}' (it has {sorted(outputs)})"
                )
        if inputs[b.input_name].type != "tensor(uint8)":
            raise BundleError(
                f"bundle {b.path}: model input must be uint8 NHWC, got {inputs[b.input_name].type}"
            )
        self._fixed_batch = self._check_input_shape(inputs[b.input_name].shape)
        for name in [n for n in (b.codes_output, b.fine_output) if n is not None]:
            if name in outputs and outputs[name].type != "tensor(uint8)":
                raise BundleError(
                    f"bundle {b.path}: the model's '{name}' output must be packed bits, uint8 "
                    f"(numpy.packbits of the 0/1 bits, big-endian), got {outputs[name].type}")
        if b.fine_output is None and ("fine_codes" in outputs or "rsir.fine_code" in
                                      self.session.get_modelmeta().custom_metadata_map):
            log.warning("bundle %s: the model has a fine code but manifest.json records none "
                        "(no 'fine_code'): searches will not rank by appearance; restore the "
                        "manifest's fine_code record", b.path)
        width = outputs[b.codes_output].shape[-1]
        if isinstance(width, int) and width * 8 != b.bits:
            raise BundleError(
                f"bundle {b.path}: manifest says {b.bits} bits but the model's "
                f"'{b.codes_output}' output has {width} bytes ({width * 8} bits)"
            )
        if b.fine_output is not None:
            self._check_fine_output(outputs)
        meta = self.session.get_modelmeta().custom_metadata_map
        meta_bits = meta.get("rsir.bits")
        if meta_bits is not None and int(meta_bits) != b.bits:
            raise BundleError(
                f"bundle {b.path}: manifest says {b.bits} bits but the model's metadata says "
                f"{meta_bits}"
            )
        self._check_preprocess_metadata(meta.get("rsir.preprocess"))

    def _check_input_shape(self, shape: Sequence[Any]) -> int | None:
        """The graph's input must be ``(batch, height, width, 3)`` of the manifest's size;
        returns its batch size when the graph fixes it to 1 (encoded one image per run), else
        None. Checked at load: onnxruntime's own message came with every image encoded."""
        b = self.bundle
        want = f"(batch, {b.input_height}, {b.input_width}, 3)"
        if len(shape) != 4:
            raise BundleError(f"bundle {b.path}: the model's input must be 4-D {want} uint8 "
                              f"NHWC, got shape {list(shape)}")
        batch, height, width, channels = shape
        if isinstance(channels, int) and channels != 3:
            hint = " (NCHW: the runtime feeds NHWC; transpose inside the graph)" \
                if shape[1] == 3 else ""
            raise BundleError(f"bundle {b.path}: the model's input must be {want} NHWC, got "
                              f"shape {list(shape)}{hint}")
        for axis, got, need in (("height", height, b.input_height), ("width", width, b.input_width)):
            if isinstance(got, int) and got != need:
                raise BundleError(f"bundle {b.path}: the model's input {axis} is {got} but the "
                                  f"manifest's input.{axis} is {need}")
        if isinstance(batch, int) and batch > 1:
            raise BundleError(f"bundle {b.path}: the model's batch size is fixed to {batch}; "
                              f"export it with a dynamic batch axis (dynamic_axes)")
        return 1 if batch == 1 else None

    def _run(self, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
        """One session run on ``batch``; a graph whose batch size is fixed to 1 runs once per
        image and its outputs are stacked."""
        feed = self.bundle.input_name
        if self._fixed_batch is None or len(batch) == 1:
            return list(self.session.run(names, {feed: batch}))
        parts = [self.session.run(names, {feed: batch[i:i + 1]}) for i in range(len(batch))]
        return [np.concatenate([part[j] for part in parts]) for j in range(len(names))]

    def _check_fine_output(self, outputs: dict) -> None:
        """The manifest's fine code must be an output of the graph, of its recorded width."""
        b = self.bundle
        if b.fine_output not in outputs:
            raise BundleError(f"bundle {b.path}: manifest records a fine code but the model has "
                              f"no output '{b.fine_output}' (it has {sorted(outputs)})")
        width = outputs[b.fine_output].shape[-1]
        if isinstance(width, int) and b.fine_bits is not None and width * 8 != b.fine_bits:
            raise BundleError(f"bundle {b.path}: manifest says the fine code has {b.fine_bits} "
                              f"bits but the model's '{b.fine_output}' output has {width} bytes")

    def _check_preprocess_metadata(self, recorded_json: str | None) -> None:
        """The manifest's resize/crop/resampling must be those the model recorded when written:
        the model's bytes are the encoder's identity, the manifest is not, so an edited
        manifest would otherwise give other codes under the same encoder id."""
        if recorded_json is None:
            return
        try:
            recorded = json.loads(recorded_json)
        except ValueError:
            return   # metadata written by another tool: nothing to compare with
        if not isinstance(recorded, dict):
            return
        for key in ("resize", "crop", "interpolation"):
            mine, theirs = self.bundle.preprocess.get(key), recorded.get(key)
            if key == "interpolation":
                mine, theirs = str(mine or "bilinear").lower(), str(theirs or "bilinear").lower()
            elif key == "crop":
                mine, theirs = _as_hw(mine), _as_hw(theirs)
            if key in recorded and mine != theirs:
                raise BundleError(
                    f"bundle {self.bundle.path}: manifest.json field 'preprocess.{key}' is "
                    f"{json.dumps(self.bundle.preprocess.get(key))} but "
                    f"{self.bundle.model_path.name} was written with {json.dumps(recorded[key])}: "
                    f"the manifest was edited; restore it or write the bundle again")

    def read(self, image: ImageSource) -> Raster:
        """Read one image as :meth:`prepare` does (this encoder's raster rule and URL limits):
        its RGB pixels and georeferencing (a GeoTIFF's footprint and time; ``{}`` for none)."""
        return read_image(image, rule=self.raster_rule, url_timeout=self.url_timeout,
                          allow_private_urls=self.allow_private_urls)

    def prepare(self, image: ImageSource) -> np.ndarray:
        """Load one image and resize/crop it to the model input, ``uint8 (h, w, 3)``."""
        return prepare(self.read(image).rgb, self.bundle.preprocess)

    def encode_for_writes(self, images: ImageSource | Iterable[ImageSource],
                          batch_size: int | None = None, fine: bool = False,
                          ) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
        """``(codes, fine codes or None, georeferencing per image)``, every image read once.

        Why: a write keeps a GeoTIFF's footprint and time as ``rsir index`` does (``add_images``
        of the same file stored it without a place, so place searches never found it). ``fine``:
        both codes from one forward pass (:meth:`encode_both`)."""
        items = _as_list(images)
        bs = _batch_size(batch_size, self.batch_size)
        codes: list[np.ndarray] = []
        fines: list[np.ndarray] = []
        georefs: list[dict[str, Any]] = []
        for start in range(0, len(items), bs):
            prepared = []
            for source in items[start:start + bs]:  # one full-size raster alive at a time
                raster = self.read(source)
                georefs.append(dict(raster.georef))
                prepared.append(prepare(raster.rgb, self.bundle.preprocess))
            batch = np.stack(prepared)
            if fine:
                both = self.encode_both_arrays(batch)
                codes.append(both.codes)
                fines.append(both.fine)  # type: ignore[arg-type]  # set by encode_both_arrays
            else:
                codes.append(self.encode_arrays(batch))
        out = np.concatenate(codes) if codes else np.zeros((0, self.bits // 8), np.uint8)
        if not fine:
            return out, None, georefs
        width = (self.fine_bits or 0) // 8
        return out, np.concatenate(fines) if fines else np.zeros((0, width), np.uint8), georefs

    @overload
    def encode_arrays(self, batch: np.ndarray, return_embeddings: Literal[False] = ...) -> np.ndarray: ...
    @overload
    def encode_arrays(self, batch: np.ndarray, return_embeddings: Literal[True]) -> Encoded: ...

    def encode_arrays(self, batch: np.ndarray, return_embeddings: bool = False) -> np.ndarray | Encoded:
        """Run the model on already prepared images ``uint8 (n, h, w, 3)``."""
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        h, w = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (h, w, 3):
            raise ValueError(f"prepared batch must be (n, {h}, {w}, 3) uint8, got {batch.shape}")
        b = self.bundle
        names = [b.codes_output, b.embedding_output] if return_embeddings else [b.codes_output]
        out = self._run(names, batch)
        codes = as_packed(out[0], b.bits)
        if return_embeddings:
            return Encoded(codes, np.asarray(out[1], dtype=np.float32))
        return codes

    def encode_both_arrays(self, batch: np.ndarray) -> Encoded:
        """Retrieval codes, embeddings and fine codes of prepared images ``uint8 (n, h, w, 3)``
        from ONE session run (one forward pass). Raises :class:`BundleError` for a bundle
        without a fine code (``fine_bits is None``)."""
        b = self.bundle
        if b.fine_output is None or b.fine_bits is None:
            raise BundleError(f"bundle {b.path} has no fine code (written before issue 20): "
                              f"train it again with rsir train to get one")
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        h, w = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (h, w, 3):
            raise ValueError(f"prepared batch must be (n, {h}, {w}, 3) uint8, got {batch.shape}")
        out = self._run([b.codes_output, b.embedding_output, b.fine_output], batch)
        return Encoded(as_packed(out[0], b.bits), np.asarray(out[1], dtype=np.float32),
                       as_packed(out[2], b.fine_bits))

    def encode_both(self, images: ImageSource | Iterable[ImageSource],
                    batch_size: int | None = None) -> Encoded:
        """Encode images to :class:`Encoded` with ``codes`` (the retrieval codes, as
        :meth:`encode` gives), ``embeddings`` and ``fine`` (the fine codes, ``uint8
        (n, fine_bits/8)``), all from one forward pass per batch.

        Why: the store ranks a tie group of retrieval codes by the fine code (issue 20), so
        both are needed for every image, and a second pass would double the encoding time.
        """
        if self.fine_bits is None:
            raise BundleError(f"bundle {self.bundle.path} has no fine code (written before "
                              f"issue 20): train it again with rsir train to get one")
        items = _as_list(images)
        bs = _batch_size(batch_size, self.batch_size)
        parts = [self.encode_both_arrays(np.stack([self.prepare(x) for x in items[s:s + bs]]))
                 for s in range(0, len(items), bs)]
        if not parts:
            return Encoded(np.zeros((0, self.bits // 8), np.uint8),
                           np.zeros((0, self.bits), np.float32),
                           np.zeros((0, self.fine_bits // 8), np.uint8))
        return Encoded(np.concatenate([p.codes for p in parts]),
                       np.concatenate([p.embeddings for p in parts]),
                       np.concatenate([p.fine for p in parts if p.fine is not None]))

    def encode_fine(self, images: ImageSource | Iterable[ImageSource],
                    batch_size: int | None = None) -> np.ndarray:
        """The fine codes alone, ``uint8 (n, fine_bits/8)`` (see :meth:`encode_both`)."""
        fine = self.encode_both(images, batch_size).fine
        assert fine is not None
        return fine

    @overload
    def encode(self, images: ImageSource | Iterable[ImageSource], batch_size: int | None = ...,
               return_embeddings: Literal[False] = ...) -> np.ndarray: ...
    @overload
    def encode(self, images: ImageSource | Iterable[ImageSource], batch_size: int | None,
               return_embeddings: Literal[True]) -> Encoded: ...
    @overload
    def encode(self, images: ImageSource | Iterable[ImageSource], *,
               return_embeddings: Literal[True]) -> Encoded: ...

    def encode(
        self,
        images: ImageSource | Iterable[ImageSource],
        batch_size: int | None = None,
        return_embeddings: bool = False,
    ) -> np.ndarray | Encoded:
        """Encode images (one source or a list) to packed codes ``uint8 (n, bits/8)``.

        With ``return_embeddings=True`` returns :class:`Encoded` with the continuous
        embeddings too. An unreadable image raises :class:`~rsir_sdk.ImageLoadError` naming it.
        """
        items = _as_list(images)
        bs = _batch_size(batch_size, self.batch_size)
        codes_parts: list[np.ndarray] = []
        emb_parts: list[np.ndarray] = []
        for start in range(0, len(items), bs):
            prepared = np.stack([self.prepare(x) for x in items[start : start + bs]])
            if return_embeddings:
                res = self.encode_arrays(prepared, True)
                codes_parts.append(res.codes)
                emb_parts.append(res.embeddings)
            else:
                codes_parts.append(self.encode_arrays(prepared))
        nbytes = self.bits // 8
        codes = np.concatenate(codes_parts) if codes_parts else np.zeros((0, nbytes), np.uint8)
        if return_embeddings:
            emb = np.concatenate(emb_parts) if emb_parts else np.zeros((0, self.bits), np.float32)
            return Encoded(codes, emb)
        return codes

    def __repr__(self) -> str:
        fine = f", fine_bits={self.fine_bits}" if self.fine_bits is not None else ""
        return (
            f"Encoder(method={self.bundle.method!r}, bits={self.bits}{fine}, "
            f"encoder_id={self.bundle.encoder_id!r}, providers={self.providers})"
        )


def _as_hw(crop: object) -> object:
    if isinstance(crop, int) and not isinstance(crop, bool):
        return [crop, crop]
    return list(crop) if isinstance(crop, (list, tuple)) else crop


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, bytes, bytearray, os.PathLike, np.ndarray, Raster)) or hasattr(
        images, "read"
    ):
        return [images]
    try:
        from PIL import Image

        if isinstance(images, Image.Image):
            return [images]
    except ImportError:  # pragma: no cover
        pass
    try:
        return list(images)
    except TypeError:  # None, a number: not images
        raise InvalidInputError(f"images must be an image or a list of images (paths, URLs, "
                                f"bytes, arrays, PIL images), got {type(images).__name__}") from None


def _known_providers(names: Sequence[str]) -> list[str]:
    """The requested onnxruntime providers this installation has, in order; the others are
    named in one warning (onnxruntime printed a banner and a warning for each), and with none
    left the default choice runs."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    known = [n for n in names if n in available]
    unknown = [n for n in names if n not in available]
    if unknown:
        log.warning("onnxruntime here has no %s (it has %s); %s", ", ".join(map(str, unknown)),
                    ", ".join(sorted(available)),
                    "using " + ", ".join(known) if known else "using the default choice")
    return known or default_providers()


def _batch_size(value: Any, default: int) -> int:
    """``value`` as a batch size (``None``: ``default``); InvalidInputError for anything but an
    integer >= 1 (``-1`` encoded nothing and returned no codes without a word)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"batch_size must be a positive integer or None, got {value!r:.40}")
    return int(value)
