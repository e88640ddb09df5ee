"""Running ``tchan`` in tests: through the installed console script in its own process, or
through the same entry point (:func:`offchain.cli.main`) in this process, and checking that an
error is one clear line."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from offchain.cli import main

TCHAN = str(Path(sys.executable).parent / "tchan")


def tchan_process(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``tchan ARGS`` through the installed console script, in its own process."""
    return subprocess.run([TCHAN, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, input="")


def tchan(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``tchan ARGS`` through the same entry point, :func:`offchain.cli.main`, in this process:
    the same parsing, dispatch and error printing as the console script (which the tests using
    :func:`tchan_process` run), without paying a Python start-up per case."""
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess([TCHAN, *args], code, stdout.getvalue(), stderr.getvalue())


def one_line_error(run: subprocess.CompletedProcess[str], starts: str, code: int = 1) -> None:
    """The run failed with ``code`` and printed exactly one line on stderr, starting with ``starts``."""
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(starts), lines[0]
    assert "Traceback" not in run.stderr + run.stdout
