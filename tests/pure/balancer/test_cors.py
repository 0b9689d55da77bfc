"""CORS answers, as llama-server gives them for the same settings (checked on the
pinned build), but for the safe default and lists of origins."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.balancer.cors import Cors, CorsError


def preflight(cors: Cors, origin: str | None) -> dict[str, str]:
    return dict(cors.preflight_headers(origin))


def test_the_default_allows_any_origin_without_credentials():
    cors = Cors()
    assert preflight(cors, "http://evil.example") == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Credentials": "false",
        "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": "*",
    }
    assert cors.response_headers("http://evil.example") == [("Access-Control-Allow-Origin", "*")]
    assert cors.response_headers(None) == [("Access-Control-Allow-Origin", "*")]


def test_credentials_with_any_origin_are_refused_unlike_llama_server():
    # llama-server reflects every Origin with Allow-Credentials: true: any page could
    # then use a visitor's cookies against the API.
    with pytest.raises(CorsError, match="any web page"):
        Cors(credentials=True)
    with pytest.raises(CorsError):
        Cors(origins=" * ", credentials=True)


@given(
    origins=st.sampled_from(["*", "localhost", "http://a.test", "http://a.test, http://b.test"]),
    credentials=st.booleans(),
    origin=st.one_of(st.none(), st.text(max_size=30), st.just("http://evil.example")),
)
def test_no_setting_allows_credentials_for_every_origin(origins, credentials, origin):
    try:
        cors = Cors(origins=origins, credentials=credentials)
    except CorsError:
        return
    headers = preflight(cors, origin)
    if headers["Access-Control-Allow-Credentials"] == "true":
        allowed = headers.get("Access-Control-Allow-Origin")
        assert allowed in (None, origin) and allowed != "*"
        assert cors.allow_origin("http://evil.example") is None


def test_localhost_reflects_local_pages_only():
    cors = Cors(origins="localhost", credentials=True)
    for origin in ("http://localhost:3000", "http://127.0.0.1:5", "http://[::1]:8"):
        assert cors.allow_origin(origin) == origin
    for origin in ("http://evil.example", "http://localhost.evil.example", "not a url"):
        assert cors.allow_origin(origin) is None
    assert "Access-Control-Allow-Origin" not in preflight(cors, "http://evil.example")


def test_a_list_reflects_the_origins_in_it():
    cors = Cors(origins="http://a.test, http://b.test/", methods="GET", headers="content-type")
    assert cors.allow_origin("http://b.test") == "http://b.test"
    assert cors.allow_origin("http://c.test") is None
    assert cors.allow_origin(None) is None
    headers = preflight(cors, "http://a.test")
    assert headers["Access-Control-Allow-Methods"] == "GET"
    assert headers["Access-Control-Allow-Headers"] == "content-type"
