"""A pytest plugin that ends every run with what ran for real and what was only validated.

Tests call `report.real("...")` for a real component they exercised, and
`report.validated("...", why)` for a path that cannot run on this machine (GPU, Intel GPU) and was
checked statically instead. The closing lines list both, so nobody mistakes one for the other.
"""

from __future__ import annotations

import pytest

_real: dict[str, None] = {}
_validated: dict[str, str] = {}


class Report:
    @staticmethod
    def real(what: str) -> None:
        _real[what] = None

    @staticmethod
    def validated(what: str, why: str) -> None:
        _validated[what] = why


@pytest.fixture(scope="session")
def report() -> type[Report]:
    return Report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tr = terminalreporter
    tr.section("ran for real")
    for what in _real or {"(nothing recorded)": None}:
        tr.write_line(f"  REAL       {what}")
    tr.section("validated, not run")
    for what, why in (_validated or {"(nothing)": ""}).items():
        tr.write_line(f"  VALIDATED  {what}" + (f"  -- not run: {why}" if why else ""))
