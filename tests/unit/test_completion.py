"""Shell completion (Typer's own) for bash, zsh and fish: the script is produced, and completing
through it names the real commands, options and choices.

The program is run as installed (`exsa-doctor` beside the interpreter), as a shell would run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(sys.executable).parent / "exsa-doctor"
pytestmark = pytest.mark.skipif(not PROGRAM.exists(), reason="exsa-doctor is not installed here")

# What each shell's script must hold: the program it completes and how it asks it.
SCRIPT_MARKS = {
    "bash": ["complete -o default -F _exsa_doctor_completion exsa-doctor", "complete_bash"],
    "zsh": ["#compdef exsa-doctor", "complete_zsh"],
    "fish": ["complete --command exsa-doctor", "complete_fish"],
}


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROGRAM), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.parametrize("shell", sorted(SCRIPT_MARKS))
def test_the_completion_script_is_produced(shell: str) -> None:
    # the shell named on the command line (Typer otherwise detects the shell it runs in)
    done = run(["--show-completion", shell], _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert done.returncode == 0, done.stderr
    for mark in SCRIPT_MARKS[shell]:
        assert mark in done.stdout, (mark, done.stdout)
    checker = shutil.which(shell)
    if checker is not None:  # the script is valid syntax for that shell
        parsed = subprocess.run(
            [checker, "-n"], input=done.stdout, capture_output=True, text=True, timeout=30
        )
        assert parsed.returncode == 0, parsed.stderr


def test_bash_completes_commands_and_choices_through_its_script() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = run(
        ["--show-completion", "bash"], _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"
    ).stdout
    session = (
        script
        + "\nCOMP_WORDS=(exsa-doctor dia); COMP_CWORD=1; _exsa_doctor_completion exsa-doctor;"
        + ' printf "%s\\n" "${COMPREPLY[@]}"; echo ---;'
        + " COMP_WORDS=(exsa-doctor diagnose --format ''); COMP_CWORD=3;"
        + ' _exsa_doctor_completion exsa-doctor; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{PROGRAM.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [bash, "--norc", "--noprofile"],
        input=session,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    commands, formats = done.stdout.split("---\n")
    assert commands.split() == ["diagnose"], done.stderr
    assert formats.split() == ["text", "json", "markdown", "junit", "html"], done.stderr


def test_zsh_and_fish_protocols_complete_options_and_choices() -> None:
    # what the zsh and fish scripts ask the program, asked directly
    zsh = run([], _EXSA_DOCTOR_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="exsa-doctor ca")
    assert zsh.returncode == 0, zsh.stderr
    assert '"causes":"Print the root-cause table."' in zsh.stdout
    fish = run(
        [],
        _EXSA_DOCTOR_COMPLETE="complete_fish",
        _TYPER_COMPLETE_ARGS="exsa-doctor ps --format ",
        _TYPER_COMPLETE_FISH_ACTION="get-args",
    )
    assert fish.returncode == 0, fish.stderr
    assert fish.stdout.split() == ["text", "json"]
