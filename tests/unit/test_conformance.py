"""Conformance over every probe and every cause (house style: sos's plugin conformance tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exsa_doctor.causes import load_causes, when_finding_ids
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


def test_the_registry_names_each_probe_by_its_own_name() -> None:
    from exsa_doctor.probes import REGISTRY, probe_class, probe_names

    assert [cls.name for cls in ALL_PROBES] == [name for name, _m, _c in REGISTRY]
    assert probe_names() == tuple(cls.name for cls in ALL_PROBES)
    assert all(probe_class(name).name == name for name in probe_names())
    with pytest.raises(KeyError):
        probe_class("no-such-probe")


def test_an_offline_diagnosis_imports_only_the_logs_probe() -> None:
    # the offline budget (#13) leaves no room for psutil, httpx or the other probes' modules
    import subprocess
    import sys

    log = Path(__file__).resolve().parents[2] / "fixtures" / "realworld" / "llamacpp"
    script = (
        "import sys\n"
        "from exsa_doctor.api_offline import offline_diagnosis\n"
        f"d = offline_diagnosis([__import__('pathlib').Path({str(log / 'llamacpp-010.log')!r})])\n"
        "assert d.causes, d\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('exsa_doctor.probes.'))\n"
        "print(' '.join(loaded), 'psutil' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["exsa_doctor.probes.base", "exsa_doctor.probes.logs", "False"]


def test_every_finding_the_cause_table_names_is_emitted_by_some_probe() -> None:
    emitted = all_emitted()
    for cause in load_causes():
        missing = set(cause.evidence) - emitted
        assert not missing, f"{cause.id} weighs findings no probe emits: {sorted(missing)}"
        for step in cause.remediation:
            for named in when_finding_ids(step.when) if step.when else []:
                assert named in emitted, (cause.id, step.when)
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
