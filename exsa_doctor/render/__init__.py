"""Renderers: one module per format, each with `render(diagnosis) -> str`."""

from __future__ import annotations

import sys
from typing import Literal

if sys.version_info >= (3, 11):
    from typing import assert_never
else:  # pragma: no cover - 3.10: importing typing_extensions costs ~7 ms of start-up
    from typing_extensions import assert_never

from exsa_doctor.model import Diagnosis

FormatName = Literal["text", "json", "markdown", "junit", "html"]
FORMATS: tuple[FormatName, ...] = ("text", "json", "markdown", "junit", "html")


def render_as(diagnosis: Diagnosis, fmt: str, *, color: bool | None = None) -> str:
    """Render `diagnosis` in the named format; `color` (text only): None decides by the TTY."""
    name: FormatName = fmt  # type: ignore[assignment]
    if name == "text":
        from exsa_doctor.render import text

        return text.render(diagnosis, color=color)
    if name == "json":
        from exsa_doctor.render import json as json_format

        return json_format.render(diagnosis)
    if name == "markdown":
        from exsa_doctor.render import markdown

        return markdown.render(diagnosis)
    if name == "junit":
        from exsa_doctor.render import junit

        return junit.render(diagnosis)
    if name == "html":
        from exsa_doctor.render import html

        return html.render(diagnosis)
    assert_never(name)
