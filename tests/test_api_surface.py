"""The public API as a library maintainer reviewed it (a helper's read of the whole surface):
credentials kept out of what is shown, values hashable and serialisable as their docs say,
bad option values answered with the documented error class, numpy numbers taken wherever
Python numbers are. Each case here failed before its fix."""

from __future__ import annotations

import inspect
import json
import pickle

import numpy as np
import pytest

import rsir_sdk
from rsir_sdk import (
    Hit,
    IngestOptions,
    IngestSummary,
    InvalidInputError,
    MilvusCodeStore,
    RemoteRetriever,
    Retriever,
    RsirError,
    StoreError,
)
from rsir_sdk.times import parse_time


def test_a_service_url_with_credentials_is_shown_masked():
    """repr, errors and the closed message printed "http://admin:s3cret@..." """
    r = RemoteRetriever("http://admin:s3cret@127.0.0.1:9", retries=0, timeout=2)
    assert "s3cret" not in repr(r) and "s3cret" not in r.url and "127.0.0.1:9" in r.url
    with pytest.raises(rsir_sdk.ServiceConnectionError) as err:
        r.count()
    assert "s3cret" not in str(err.value) and "127.0.0.1:9" in str(err.value)
    r.close()
    with pytest.raises(StoreError) as err:
        r.count()
    assert "s3cret" not in str(err.value)


def test_credentials_stay_masked_in_answers_from_a_web_server(tmp_path):
    """A 404 from something that is not rsir serve named the request URL with its password."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with RemoteRetriever(f"http://admin:s3cret@127.0.0.1:{server.server_port}",
                             retries=0) as r:
            with pytest.raises(RsirError) as err:
                r.count()
        assert "not an rsir service's answer" in str(err.value), err.value
        assert "s3cret" not in str(err.value) and "***@127.0.0.1" in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_http_options_of_the_wrong_type_are_one_line():
    with pytest.raises(InvalidInputError, match="http must be an HttpOptions value"):
        RemoteRetriever("http://127.0.0.1:9", http={"timeout": 3})


def test_hits_are_hashable_and_equal_hits_hash_alike():
    a = Hit("x", 3, "Forest", metadata={"cloud": 0.1})
    b = Hit("x", 3, "Forest", metadata={"cloud": 0.1})
    assert a == b and hash(a) == hash(b) and len({a, b, Hit("y", 3)}) == 2
    assert pickle.loads(pickle.dumps(a)) == a


@pytest.mark.parametrize("change, words", [
    ({"extensions": None}, "extensions must be a list of suffixes"),
    ({"only_ids": 5}, "only_ids must be a collection of ids"),
    ({"root": 5}, "root must be a folder path"),
    ({"workers": 0}, "workers must be a positive integer"),
    ({"workers": True}, "workers must be a positive integer"),
])
def test_bad_ingest_options_raise_the_documented_error(change, words):
    with pytest.raises(InvalidInputError, match=words):
        IngestOptions(**change)


def test_numpy_numbers_are_taken_where_python_numbers_are():
    opts = IngestOptions(workers=np.int64(2), batch_size=np.int32(16))
    assert (opts.workers, opts.batch_size) == (2, 16) and type(opts.workers) is int
    json.dumps(opts.to_json())
    assert parse_time(np.int64(1622505600)) == parse_time(1622505600) == 1622505600.0
    with pytest.raises(InvalidInputError):
        parse_time(np.bool_(True))


def test_errors_remote_callers_catch_are_in_the_package():
    for name in ("ServiceError", "ServiceTimeoutError", "ServiceConnectionError",
                 "AuthenticationError", "ForbiddenError", "ServiceBusyError",
                 "PayloadTooLargeError", "InvalidRequestError"):
        cls = getattr(rsir_sdk, name)
        assert issubclass(cls, RsirError) and name in rsir_sdk.__all__, name


def test_a_store_says_how_to_use_it_in_another_process():
    store = object.__new__(MilvusCodeStore)
    with pytest.raises(TypeError, match="open one in each process"):
        pickle.dumps(store)


def test_summaries_serialise_by_the_same_name_as_hits():
    summary = IngestSummary(total=3, indexed=2, skipped=1)
    assert summary.to_json() == summary.as_dict() and json.dumps(summary.to_json())


def test_prepare_for_search_names_its_options_alike_in_process_and_over_http():
    local = inspect.signature(Retriever.prepare_for_search)
    remote = inspect.signature(RemoteRetriever.prepare_for_search)
    assert list(local.parameters) == list(remote.parameters) == ["self", "timeout", "progress"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY
               for name, p in local.parameters.items() if name != "self")
