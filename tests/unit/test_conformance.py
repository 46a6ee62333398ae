"""Conformance over every probe and every cause (house style: sos's plugin conformance tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exsa_doctor.causes import load_causes
from exsa_doctor.probes import ALL_PROBES
from exsa_doctor.scoring import _PLACEHOLDER

DOCS = Path(__file__).resolve().parents[2] / "docs" / "findings.md"


def all_emitted() -> set[str]:
    return {fid for cls in ALL_PROBES for fid in cls.emits}


@pytest.mark.parametrize("cls", ALL_PROBES, ids=lambda c: c.name)
def test_every_probe_is_documented_and_bounded(cls: type) -> None:
    import sys

    assert cls.name and cls.title
    assert cls.__doc__ and len(cls.__doc__.strip()) > 20
    assert sys.modules[cls.__module__].__doc__
    assert cls.timeout_s > 0
    assert cls.emits, f"probe {cls.name} declares no finding ids"
    assert all(fid.startswith(cls.name + ".") for fid in cls.emits), cls.emits


def test_probe_names_are_unique() -> None:
    names = [cls.name for cls in ALL_PROBES]
    assert len(names) == len(set(names))


def test_every_finding_the_cause_table_names_is_emitted_by_some_probe() -> None:
    emitted = all_emitted()
    for cause in load_causes():
        missing = set(cause.evidence) - emitted
        assert not missing, f"{cause.id} weighs findings no probe emits: {sorted(missing)}"
        for step in cause.remediation:
            # `when` is a finding id, optionally with `:key=value` on that finding's data
            assert step.when is None or step.when.partition(":")[0] in emitted, (
                cause.id,
                step.when,
            )
            for text in (step.text, *step.commands):
                for source, _key in _PLACEHOLDER.findall(text):
                    assert source == "target" or source in emitted, (cause.id, source)


def test_every_cause_has_a_remediation_with_a_command_and_a_confirmation() -> None:
    for cause in load_causes():
        assert cause.remediation, cause.id
        assert any(step.commands for step in cause.remediation), cause.id
        assert cause.confirm, cause.id
        assert cause.description, cause.id
        for step in cause.remediation:
            for cmd in step.commands:
                assert "pkill" not in cmd and "killall" not in cmd, (cause.id, cmd)


def test_every_cause_has_evidence_for_and_against() -> None:
    for cause in load_causes():
        assert any(w > 1 for w in cause.evidence.values()), cause.id
        assert any(w < 1 for w in cause.evidence.values()), cause.id


def test_the_public_cause_ids_are_all_there() -> None:
    assert {c.id for c in load_causes()} == {
        "race-condition",
        "port-in-use",
        "model-file-lock",
        "mmap-conflict",
        "engine-not-running",
        "hung-during-load",
        "model-missing-or-invalid",
        "wrong-address",
        "zero-token-generation",
        "out-of-memory",
        "overloaded",
        # issue 13: causes read from real failure logs
        "unsupported-architecture",
        "bad-cli-argument",
        "permission-denied",
        "missing-shared-library",
        "gpu-runtime-error",
        "cpu-unsupported-instructions",
        "bind-address-unavailable",
        "unrecognised-error",
        "auth-required",  # issue 9
    }


def test_the_documented_finding_ids_match_what_probes_emit() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert documented == all_emitted()
