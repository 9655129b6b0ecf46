"""Running the real CLI in-process in tests."""

from __future__ import annotations

from estimators.cli import main


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m estimators ARGV`, run in this process."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err
