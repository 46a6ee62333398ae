"""Target resolution: options and environment -> Target; bad input -> UsageError."""

from __future__ import annotations

from pathlib import Path

import pytest

from exsa_doctor.target import UsageError, parse_time, resolve_target, split_url


def test_defaults_follow_the_environment() -> None:
    t = resolve_target(environ={})
    assert (t.host, t.port, t.url) == ("127.0.0.1", 3000, "http://127.0.0.1:3000")
    t = resolve_target(environ={"PORT": "3011"})
    assert t.port == 3011
    t = resolve_target(environ={"EXSA_URL": "http://localhost:4000", "PORT": "3011"})
    assert (t.host, t.port) == ("localhost", 4000)
    t = resolve_target(environ={"MODEL_PATH": "/m/x.gguf"})
    assert t.model == Path("/m/x.gguf") and t.model_source == "MODEL_PATH"


def test_explicit_options_win() -> None:
    t = resolve_target(url="http://[::1]:8080", model=Path("a.gguf"), environ={"MODEL_PATH": "b"})
    assert (t.host, t.port, t.model) == ("::1", 8080, Path("a.gguf"))
    assert t.base_url == "http://[::1]:8080"


def test_llama_server_profile_defaults_to_its_port() -> None:
    t = resolve_target(profile="llama-server", environ={})
    assert t.port == 8080 and t.profile.name == "llama-server"


@pytest.mark.parametrize(
    "url", ["ftp://x:1", "http://", "http://host:99999", "http://h:abc", "http://[::1"]
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        resolve_target(url=url, environ={})


def test_unknown_profile_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown profile"):
        resolve_target(profile="nope", environ={})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2025-11-23T23:41:56Z", 1763941316.0),
        ("2025-11-23T23:41:56+00:00", 1763941316.0),
        ("1763941316", 1763941316.0),
        ("1763941316500", 1763941316.5),
        ("1763941316.25", 1763941316.25),
    ],
)
def test_failed_at_formats(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "yesterday", "0", "2025-13-45T99:00:00", "99999999999999999"])
def test_impossible_times_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time(text)


def test_split_url_defaults_ports_by_scheme() -> None:
    assert split_url("https://example") == ("https", "example", 443)
    assert split_url("http://127.0.0.1:3000/") == ("http", "127.0.0.1", 3000)
    # issue 9: a URL without a scheme is a usage error, not http://notaurl:80
    with pytest.raises(UsageError, match="no scheme"):
        split_url("127.0.0.1:3000")
