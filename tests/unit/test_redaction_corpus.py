"""The redaction corpus (fixtures/redaction/): every planted secret is replaced, and only it,
byte for byte; every innocent look-alike from real engine logs comes out unchanged."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from exsa_doctor.redact import Redactor

ROOT = Path(__file__).resolve().parents[2]


def _load_corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "redaction_corpus", ROOT / "fixtures" / "redaction" / "corpus.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
SECRETS = corpus.secret_cases()
INNOCENTS = corpus.innocent_cases()
ENVIRONMENT = corpus.innocent_environment()


def test_the_corpus_is_as_large_as_promised() -> None:
    assert len(SECRETS) >= 60
    assert len({c.name for c in SECRETS}) == len(SECRETS)
    curated = corpus.innocent_cases(with_logs=False)
    assert len(curated) >= 40
    assert len(INNOCENTS) >= 60
    # every planted secret is marked, and none of them is marked empty
    assert all(c.secrets and all(c.secrets) for c in SECRETS)


@pytest.mark.parametrize("case", SECRETS, ids=[c.name for c in SECRETS])
def test_a_planted_secret_is_replaced_and_nothing_else(case: object) -> None:
    r = Redactor()
    out = r.text(case.text, "corpus")  # type: ignore[attr-defined]
    for secret in case.secrets:  # type: ignore[attr-defined]
        assert secret not in out
    assert case.expected().fullmatch(out), out  # type: ignore[attr-defined]
    assert len(r.redactions) == len(case.secrets)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "case", INNOCENTS, ids=[f"{c.source}:{i}" for i, c in enumerate(INNOCENTS)]
)
def test_an_innocent_look_alike_is_kept_byte_for_byte(case: object) -> None:
    r = Redactor()
    r.learn_environment(ENVIRONMENT)
    assert r.text(case.text, "corpus") == case.text  # type: ignore[attr-defined]
    assert r.redactions == []


def test_secrets_learned_in_one_case_are_replaced_in_all() -> None:
    r = Redactor()
    for case in SECRETS:
        r.learn_text(case.text)
    everything = "\n".join(case.text for case in SECRETS)
    out = r.text(everything, "all")
    for case in SECRETS:
        for secret in case.secrets:
            assert secret not in out, case.name


def test_the_figures_are_perfect_on_this_corpus() -> None:
    figures = corpus.evaluate()
    assert figures.failures == []
    assert figures.recall == 1.0 and figures.precision == 1.0
    assert figures.exact_secret_cases == figures.secret_cases == len(SECRETS)
    assert figures.intact_innocent_cases == figures.innocent_cases == len(INNOCENTS)
