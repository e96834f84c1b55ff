"""Which build of the hot path runs (duck_prefork/build.py): compiled only when every compiled
module is there and was compiled from the sources beside it; the environment variable forces
the pure-Python build."""

from __future__ import annotations

import importlib.machinery

import pytest

from duck_prefork import build


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package directory holding sources, and compiled modules with a stamp on request."""
    monkeypatch.setattr(build, "_PACKAGE_DIR", str(tmp_path))
    monkeypatch.delenv(build.PURE_ENV, raising=False)
    for module in build.COMPILED:
        source = tmp_path.joinpath(*module.split(".")[1:]).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {module}\n")

    def compile_all(stamp: bool = True) -> None:
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        for module in build.COMPILED:
            stem = tmp_path.joinpath(*module.split(".")[1:])
            stem.with_name(stem.name + suffix).write_bytes(b"")
        if stamp:
            tmp_path.joinpath(build.STAMP).write_text("".join(
                f"{module} {build.source_digest(module)}\n" for module in build.COMPILED))

    return tmp_path, compile_all


def test_compiled_when_every_module_matches_its_source(package):
    _, compile_all = package
    compile_all()
    assert build._choose() == (True, "compiled with mypyc")


def test_pure_without_compiled_modules(package):
    assert build._choose() == (False, "pure Python: no compiled modules")


def test_pure_when_a_source_changed_since_it_was_compiled(package):
    root, compile_all = package
    compile_all()
    root.joinpath("http1", "stream.py").write_text("# edited\n")
    compiled, why = build._choose()
    assert not compiled and "out of date" in why


def test_pure_when_the_stamp_is_missing(package):
    _, compile_all = package
    compile_all(stamp=False)
    compiled, why = build._choose()
    assert not compiled and "out of date" in why


@pytest.mark.parametrize("value, compiled", [("1", False), ("yes", False), ("0", True),
                                             ("", True)])
def test_the_environment_forces_the_pure_build(package, monkeypatch, value, compiled):
    _, compile_all = package
    compile_all()
    monkeypatch.setenv(build.PURE_ENV, value)
    assert build._choose()[0] is compiled


def test_this_process_runs_what_build_says():
    """The modules imported are the build DESCRIPTION names (all compiled, or all sources)."""
    import duck_prefork.http1.connection as connection

    assert connection.__file__.endswith(".py") is (not build.COMPILED_IN_USE)
