"""The shipped systemd units pass `systemd-analyze verify` without a warning, start
duck-prefork with options that exist, and leave the master time to stop gracefully; the
EnvironmentFile example names only real DUCK_PREFORK_* variables, with values that parse.

The verify test does not skip when systemd-analyze is missing: .ci/run installs it, and
elsewhere the failure says which package to install."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from duck_prefork.cli import parse_args
from duck_prefork.config import ENV_PREFIX, OPTIONS, OPTIONS_BY_NAME, from_environment
from duck_prefork.worker.process import LIFESPAN_SHUTDOWN_TIMEOUT

from .conftest import ROOT

pytestmark = pytest.mark.timeout(30)

UNITS_DIR = ROOT / "systemd"
UNITS = sorted(p for p in UNITS_DIR.iterdir() if p.suffix in (".service", ".socket"))
ENV_EXAMPLE = UNITS_DIR / "duck-prefork.env.example"
INSTANCE = "shop"  # what a template unit is verified and read as
EXEC_START = re.compile(r"^ExecStart=(\S+)", re.MULTILINE)


def unit_name(path: Path) -> str:
    return path.name.replace("@.", f"@{INSTANCE}.")


def settings(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a unit file, with the template's %i filled in (last one wins)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key: value.replace("%i", INSTANCE) for key, value in pairs}


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(s|min)?", value).groups()
    return int(number) * (60 if unit == "min" else 1)


@pytest.fixture(scope="module")
def verifiable_units(tmp_path_factory) -> Path:
    """The units, copied with the ExecStart= program pointed at this venv's duck-prefork.

    verify fails when that program does not exist, and nothing installs
    /usr/local/bin/duck-prefork or /opt/<app>/venv here; the copy changes that path and
    nothing else, so what passes is what ships."""
    program = Path(sysconfig.get_path("scripts")) / "duck-prefork"
    assert program.is_file(), f"{program} missing: install the project (bin/test does)"
    where = tmp_path_factory.mktemp("units")
    for unit in UNITS:
        text = unit.read_text()
        copy = EXEC_START.sub(lambda m: f"ExecStart={program}", text)
        changed = [(old, new) for old, new in zip(text.splitlines(), copy.splitlines(),
                                                  strict=True) if old != new]
        if unit.suffix == ".service":
            assert len(changed) == 1, f"{unit.name}: expected exactly one ExecStart= line"
            shipped = EXEC_START.search(text)[1]
            assert shipped.endswith("/duck-prefork"), shipped
            assert changed[0][1].startswith(f"ExecStart={program} "), changed
        else:
            assert not changed, f"{unit.name}: a socket unit starts nothing itself"
        (where / unit.name).write_text(copy)
    return where


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit, verifiable_units):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: apt-get install systemd (.ci/run does)"
    # --recursive-errors=no: only our unit counts, not the host's targets it pulls in. A
    # template is verified as an instance, with its socket/service partner beside it.
    result = subprocess.run(
        [analyze, "verify", "--recursive-errors=no", str(verifiable_units / unit_name(unit))],
        capture_output=True, text=True, timeout=20)
    ours = [line for line in result.stderr.splitlines()
            if "duck-prefork" in line or str(verifiable_units) in line]
    assert result.returncode == 0, result.stderr
    assert not ours, result.stderr  # verify exits 0 on warnings such as an unknown key


@pytest.mark.parametrize("unit", [u for u in UNITS if u.suffix == ".service"],
                         ids=lambda p: p.name)
def test_service_runs_real_options_and_outlasts_the_graceful_stop(unit):
    unit_settings = settings(unit)
    argv = shlex.split(unit_settings["ExecStart"])[1:]
    # Spelled out in full: argparse would also take an abbreviation (--nam for --name).
    flags = {arg.split("=")[0] for arg in argv if arg.startswith("--")}
    assert flags <= {option.long for option in OPTIONS}, flags
    try:
        config = parse_args(argv, environ={})
    except SystemExit as exc:  # argparse's way of saying "no such option"
        pytest.fail(f"{unit.name}: ExecStart= is not a valid command line ({exc})")
    # The socket lives in the directory systemd creates for it (and removes at stop).
    assert config.bind == [f"unix:/run/{unit_settings['RuntimeDirectory']}/http.sock"]
    # The master kills its workers graceful_timeout + lifespan shutdown + 1 s after TERM; a
    # shorter TimeoutStopSec= would have systemd kill them first.
    master_gives_up = config.graceful_timeout + LIFESPAN_SHUTDOWN_TIMEOUT + 1
    assert seconds(unit_settings["TimeoutStopSec"]) > master_gives_up
    # A worker stuck at boot should end in our exit 3 with its cause, not in systemd's timeout.
    assert seconds(unit_settings["TimeoutStartSec"]) > config.boot_timeout


def test_environment_file_example_names_real_variables_with_valid_values():
    known = {option.env for option in OPTIONS} | {ENV_PREFIX + "APP"}
    # Any DUCK_PREFORK_* name in systemd/, prose included, must be one the server reads.
    for path in UNITS_DIR.iterdir():
        named = set(re.findall(r"\bDUCK_PREFORK_[A-Z_]+", path.read_text()))
        assert named <= known, f"{path.name}: {named - known}"
    # Commented-out lines are suggestions: their values must parse as well as the active ones.
    lines = [line.lstrip("#") for line in ENV_EXAMPLE.read_text().splitlines()]
    assignments = [line.split("=", 1) for line in lines if line.startswith(ENV_PREFIX)]
    assert OPTIONS_BY_NAME["workers"].env in dict(assignments)
    for key, value in assignments:
        if key != ENV_PREFIX + "APP":
            assert from_environment({key: value}), key  # raises ConfigError on a bad value
