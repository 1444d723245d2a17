"""The service's JSON shapes (pydantic models): what the OpenAPI schema documents.

Request bodies that may come in several content types (multipart, raw bytes, JSON) are parsed
by :mod:`rsir_sdk.serve.inputs`; these models validate their JSON forms and describe every
answer. Field names follow the Python API (``ids``, ``labels``, ``paths``, ``metadata``,
``footprints``, ``times``, ``k``, ``filter``, ``radius``, ``bbox``, ``near``, ``time``), so a
call reads the same in both.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

#: a filter value: a scalar (equality; null: the key holds null) or a list of them (``in``)
Scalar = Union[str, int, float, bool, None]
FilterValue = Union[Scalar, list[Scalar]]


class Strict(BaseModel):
    """Refuse unknown fields, so a misspelt ``radious`` is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class SearchOptions(Strict):
    k: int = Field(10, description="how many hits (1..max_k)")
    filter: Optional[Union[dict[str, FilterValue], str]] = Field(
        None, description='equality per key; a list means "in"; "label", "id", "path" are '
                          'columns, other keys metadata keys. Example: {"label": ["Forest", "River"]}. '
                          'Or a Milvus expression string (unless the service runs with '
                          '--no-expressions), e.g. "label == \\"Forest\\""')
    radius: Optional[int] = Field(None, description="keep hits at Hamming distance <= radius")
    bbox: Optional[Union[str, list[Union[float, str]]]] = Field(
        None, description='items whose footprint meets this lon/lat box (bounds inclusive; '
                          'west > east crosses the antimeridian): [west, south, east, north] '
                          'or "west,south,east,north"')
    near: Optional[Union[str, list[Union[float, str]]]] = Field(
        None, description='items whose footprint lies within metres (great-circle) of the '
                          'point: [lon, lat, metres] or "lon,lat,metres"')
    time: Optional[Union[str, list[Optional[Union[str, float]]]]] = Field(
        None, description='items whose time lies in the period (both ends inclusive): '
                          '"start/end" in ISO 8601 (".." or an empty side is open; a date-only '
                          'end covers its day) or [start, end] (ISO strings, epoch seconds, null)')
    mode: Optional[str] = Field(
        None, description='"default": retrieval-code distance, then fine-code distance (when '
                          'the collection keeps fine codes; near-duplicates, fine distance '
                          'within 12 of 128 bits or clearly the nearest (ratio test), first), '
                          'then the id digest; "appearance": '
                          'the fine code alone (near-duplicates, the same place seen again; '
                          '`radius` then bounds the fine distance). Default "default"')


class ImageSearchJSON(SearchOptions):
    url: Optional[str] = Field(None, description="http(s) URL the service downloads")
    image_base64: Optional[str] = Field(None, description="the image file, base64")


class BatchSearchJSON(SearchOptions):
    urls: Optional[list[str]] = None
    images_base64: Optional[list[str]] = None


class CodesSearchJSON(SearchOptions):
    code: Optional[str] = Field(None, description="one packed code, base64 (bits/8 bytes)")
    codes: Optional[list[str]] = Field(None, description="several packed codes, base64 each")
    fine_code: Optional[str] = Field(
        None, description="the fine code of `code`, base64 (fine_bits/8 bytes: 16 for 128 bits)")
    fine_codes: Optional[list[str]] = Field(
        None, description="the fine codes of `codes`, in order, base64 each (required by "
                          "mode appearance; in the default mode they order each tie group)")


#: per item: null, [west, south, east, north], [lon, lat] or {"box", "centre", "time"}
FootprintValue = Optional[Union[list[float], dict[str, Any]]]
FOOTPRINTS_DOC = ("per item: null (none: then read from the item's georeferencing metadata), "
                  "[west, south, east, north], [lon, lat], or "
                  '{"box": [w, s, e, n], "centre": [lon, lat], "time": ...}')
TIMES_DOC = "per item: null, an ISO 8601 time (UTC when no offset) or epoch seconds"


class ItemColumns(Strict):
    ids: list[str]
    labels: Optional[list[str]] = None
    paths: Optional[list[str]] = None
    metadata: Optional[list[Optional[dict[str, Any]]]] = None
    footprints: Optional[list[FootprintValue]] = Field(None, description=FOOTPRINTS_DOC)
    times: Optional[list[Optional[Union[str, float]]]] = Field(None, description=TIMES_DOC)


class AddImagesJSON(ItemColumns):
    urls: Optional[list[str]] = None
    images_base64: Optional[list[str]] = None


class AddCodesJSON(ItemColumns):
    codes: list[str] = Field(description="packed codes, base64 each (bits/8 bytes)")
    fine_codes: Optional[list[str]] = Field(
        None, description="their fine codes, in order, base64 each (fine_bits/8 bytes); "
                          "required when the collection keeps fine codes (GET /v1/info "
                          "`fine_bits`)")


class IdsJSON(Strict):
    ids: list[str]


class HitOut(BaseModel):
    id: str
    distance: int
    label: str = ""
    path: str = ""
    metadata: dict[str, Any] = {}
    footprint: Optional[list[float]] = Field(
        None, description="[west, south, east, north] in degrees (null: none stored)")
    time: Optional[str] = Field(None, description="ISO 8601 UTC (null: none stored)")
    fine_distance: Optional[int] = Field(
        None, description="Hamming distance of the fine codes, present when they took part in "
                          "the ranking (in mode appearance it equals `distance`)")


class HitsOut(BaseModel):
    hits: list[HitOut]


class ResultsOut(BaseModel):
    results: list[list[HitOut]] = Field(description="one list of hits per query, in order")


class WrittenOut(BaseModel):
    written: int
    count: Optional[int] = Field(None, description="items in the collection afterwards")


class DeletedOut(BaseModel):
    deleted: int = Field(description="how many of the ids existed")
    count: Optional[int] = None


class ItemOut(BaseModel):
    id: str
    code: str = Field(description="packed code, base64")
    label: str = ""
    path: str = ""
    metadata: dict[str, Any] = {}
    footprint: Optional[list[float]] = Field(
        None, description="[west, south, east, north] in degrees (null: none stored)")
    time: Optional[str] = Field(None, description="ISO 8601 UTC (null: none stored)")


class ItemsOut(BaseModel):
    items: list[ItemOut]


class CountJSON(Strict):
    filter: Optional[Union[dict[str, FilterValue], str]] = Field(
        None, description="as for a search")
    bbox: Optional[Union[str, list[Union[float, str]]]] = Field(None, description="as for a search")
    near: Optional[Union[str, list[Union[float, str]]]] = Field(None, description="as for a search")
    time: Optional[Union[str, list[Optional[Union[str, float]]]]] = Field(
        None, description="as for a search")


class CountOut(BaseModel):
    count: int


class DuplicatesJSON(Strict):
    radius: Optional[int] = Field(
        None, description="largest fine-code Hamming distance of two near-identical items "
                          "(inclusive; null: the service's default, answered as `radius`)")
    filter: Optional[Union[dict[str, FilterValue], str]] = Field(
        None, description="only items matching it, as for a search")
    bbox: Optional[Union[str, list[Union[float, str]]]] = Field(None, description="as for a search")
    near: Optional[Union[str, list[Union[float, str]]]] = Field(None, description="as for a search")
    time: Optional[Union[str, list[Optional[Union[str, float]]]]] = Field(
        None, description="as for a search")


class DuplicatesOut(BaseModel):
    groups: list[list[str]] = Field(
        description="groups of >= 2 ids whose fine codes lie within `radius` of each other "
                    "(linked transitively); ids sorted in each group, largest group first")
    radius: int = Field(description="the radius used")


class LimitsOut(BaseModel):
    max_k: int
    max_batch: int
    max_codes: int
    max_hits: int | None = Field(None, description="codes x k one search request may ask")
    max_upload_bytes: int
    max_pixels: int | None = Field(None, description="pixels an uploaded image may have")
    request_timeout: float
    urls: bool
    expressions: bool = Field(True, description="filter may be a Milvus expression string")
    index: bool = Field(False, description="POST /v1/index is open (write token)")


class InfoOut(BaseModel):
    collection: str
    method: str
    bits: int
    encoder_id: str
    encoder: Optional[dict[str, Any]] = Field(None, description="the identity the collection records")
    classes: list[str] = []
    archive_root: Optional[str] = None
    count: int
    fine_bits: Optional[int] = Field(
        None, description="length of the served bundle's fine code (null: it has none): what "
                          "edge clients send beside each code, fine_bits/8 bytes")
    collection_fine_bits: Optional[int] = Field(
        None, description="length of the fine codes the collection keeps (null: none, e.g. a "
                          "collection made before fine codes: rebuild it for mode appearance "
                          "and duplicates)")
    fine_ranking: Optional[bool] = Field(
        None, description="whether default-mode ties are ranked by the fine code")
    without_footprint: Optional[int] = Field(
        None, description="items without a footprint (left out of place-filtered searches); "
                          "absent for a collection made before place and period were stored")
    without_time: Optional[int] = Field(
        None, description="items without a time (left out of period-filtered searches); "
                          "absent for a collection made before place and period were stored")
    exists: bool = True
    raster_rule: str = ""
    providers: list[str] = []
    auth: bool
    limits: LimitsOut
    version: str


class IndexJSON(Strict):
    archive: str = Field(description="a folder or CSV manifest inside the archive root "
                                     "(relative to it, or absolute inside it)")
    options: Optional[dict[str, Any]] = Field(
        None, description="rsir_sdk.IngestOptions as JSON (IngestOptions.to_json); engine, "
                          "address, bulk_dir, ray and a higher max_pixels are the service's to decide")


class PrepareJSON(Strict):
    timeout: Optional[float] = Field(3600.0, gt=0, description="seconds the preparation may take")


class FailureOut(BaseModel):
    id: str
    path: str
    stage: str
    reason: str


class SummaryOut(BaseModel):
    total: int
    indexed: int
    skipped: int
    failed: int = Field(description="how many images were not indexed (listed in failures)")
    ignored: int = 0
    ignored_examples: list[str] = []
    seconds: float
    images_per_second: float = 0.0
    collection: str = ""
    prepare: Optional[dict[str, Any]] = None
    bulk: Optional[dict[str, Any]] = None
    failures: list[FailureOut] = []


class ErrorOut(BaseModel):
    error: str = Field(description="the Python exception class, e.g. ImageLoadError")
    message: str = Field(description="one line: what was wrong and what to do")
    source: Optional[str] = None
    reason: Optional[str] = None
    retry_after: Optional[float] = None
