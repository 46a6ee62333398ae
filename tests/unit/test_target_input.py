"""Bad --url / --timeout input is a usage error that says what is expected (issue 9, item 7)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from exsa_doctor.target import UsageError, check_seconds, parse_url, resolve_target


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("notaurl", "has no scheme"),
        ("127.0.0.1:8080", "has no scheme"),
        ("http://", "has no host"),
        ("http://:8080", "has no host"),
        ("http://127.0.0.1:8080/health", "has a path"),
        ("http://127.0.0.1:8080/v1/", "has a path"),
        ("http://127.0.0.1:8080?x=1", "has a path"),
        ("ftp://127.0.0.1:21", "only http:// and https://"),
        ("http://127.0.0.1:99999", "1-65535"),
        ("   ", "is empty"),
    ],
)
def test_bad_urls_are_refused_with_the_expected_form(url: str, says: str) -> None:
    with pytest.raises(UsageError, match=says) as err:
        parse_url(url)
    assert "http" in str(err.value)


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("http://127.0.0.1:8080", ("http", "127.0.0.1", 8080)),
        ("http://127.0.0.1:8080/", ("http", "127.0.0.1", 8080)),
        ("https://engine.example", ("https", "engine.example", 443)),
        ("http://[::1]:3000", ("http", "::1", 3000)),
    ],
)
def test_base_urls_are_accepted(url: str, parts: tuple[str, str, int]) -> None:
    assert parse_url(url) == parts


def test_exsa_url_from_the_environment_is_named_in_the_message() -> None:
    with pytest.raises(UsageError, match=r"^EXSA_URL 'notaurl'"):
        resolve_target(environ={"EXSA_URL": "notaurl"})


def test_ipv6_host_option_builds_a_valid_url() -> None:
    target = resolve_target(host="::1", port=3000, environ={})
    assert target.base_url == "http://[::1]:3000"


@pytest.mark.parametrize("value", [0.0, -1.0, 3601.0, float("nan")])
def test_timeout_out_of_range_says_the_range(value: float) -> None:
    with pytest.raises(UsageError, match="more than 0 and at most 3600"):
        check_seconds("--timeout", value, 3600)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("diagnose", "--url", "notaurl"), "has no scheme"),
        (("diagnose", "--url", "http://127.0.0.1:8080/health"), "has a path"),
        (("diagnose", "--timeout", "0"), "more than 0 and at most 3600"),
        (("wait", "--url", "http://127.0.0.1:9", "--timeout", "0"), "at most 86400"),
        (("wait", "--url", "notaurl"), "has no scheme"),
    ],
)
def test_cli_exits_2_with_the_message_and_no_traceback(args: tuple[str, ...], says: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
