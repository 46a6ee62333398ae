"""The probe registry, by explicit import: the order here is the order probes are listed."""

from __future__ import annotations

from exsa_doctor.probes.base import Probe
from exsa_doctor.probes.generation import GenerationProbe
from exsa_doctor.probes.health import HealthProbe
from exsa_doctor.probes.logs import LogsProbe
from exsa_doctor.probes.modelfile import ModelProbe
from exsa_doctor.probes.port import PortProbe
from exsa_doctor.probes.processes import ProcessesProbe
from exsa_doctor.probes.progress import ProgressProbe
from exsa_doctor.probes.stack import StackProbe

ALL_PROBES: tuple[type[Probe], ...] = (
    PortProbe,
    ProcessesProbe,
    ModelProbe,
    HealthProbe,
    LogsProbe,
    GenerationProbe,
    ProgressProbe,
    StackProbe,
)


def probe_names() -> tuple[str, ...]:
    return tuple(p.name for p in ALL_PROBES)


def select(names: list[str] | tuple[str, ...] | None = None) -> list[Probe]:
    """Instances of the named probes (all when `names` is empty); unknown names raise KeyError."""
    if not names:
        return [cls() for cls in ALL_PROBES]
    by_name = {cls.name: cls for cls in ALL_PROBES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(", ".join(unknown))
    return [by_name[n]() for n in names]
