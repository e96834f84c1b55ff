"""load_app: module:attr specs, --factory, and what is reported when loading fails."""

from __future__ import annotations

import sys

import pytest

from duck_prefork.loader import AppLoadError, load_app
from tests.apps import basic, broken

from . import loader_apps

pytestmark = pytest.mark.timeout(30)


def test_module_attribute():
    assert load_app("tests.apps.basic:app") is basic.app


def test_dotted_attributes():
    assert load_app("tests.apps.broken:Nested.Inner.app") is broken.Nested.Inner.app


def test_instance_with_async_call_and_partial_are_accepted():
    assert load_app("tests.unit.loader_apps:instance_app") is loader_apps.instance_app
    assert load_app("tests.unit.loader_apps:partial_app") is loader_apps.partial_app


def test_factory_is_called():
    app = load_app("tests.apps.broken:make_app", factory=True)
    assert app.__name__ == "app"
    assert app is not broken.make_app


def test_factory_result_must_be_asgi():
    with pytest.raises(AppLoadError, match="ASGI 3"):
        load_app("tests.unit.loader_apps:make_sync_app", factory=True)


def test_factory_not_callable():
    with pytest.raises(AppLoadError, match="--factory"):
        load_app("tests.unit.loader_apps:not_callable", factory=True)


def test_factory_exception_propagates():
    with pytest.raises(RuntimeError, match="factory exploded"):
        load_app("tests.unit.loader_apps:factory_raises", factory=True)


def test_factory_function_without_the_flag_is_refused():
    # make_app is a plain function that builds the app: without --factory it is not an app.
    with pytest.raises(AppLoadError) as info:
        load_app("tests.apps.broken:make_app")
    assert "ASGI 3" in str(info.value)


@pytest.mark.parametrize("spec", ["tests.apps.broken:not_async",
                                  "tests.unit.loader_apps:sync_function"])
def test_plain_sync_function_is_refused(spec):
    with pytest.raises(AppLoadError, match="does not look like an ASGI 3 app"):
        load_app(spec)


def test_not_callable_is_refused_with_a_hint():
    with pytest.raises(AppLoadError, match="not callable.*--factory"):
        load_app("tests.unit.loader_apps:not_callable")


@pytest.mark.parametrize("spec", ["tests.apps.no_such_module:app", "no_such_package.mod:app",
                                  "no_such_module:app"])
def test_missing_module(spec):
    module = spec.partition(":")[0]
    with pytest.raises(AppLoadError) as info:
        load_app(spec)
    assert str(info.value).startswith(f"cannot import module {module!r}")


def test_missing_attribute():
    with pytest.raises(AppLoadError) as info:
        load_app("tests.apps.basic:nope")
    assert str(info.value) == "module 'tests.apps.basic' has no attribute 'nope'"


def test_missing_dotted_attribute_names_the_whole_path():
    with pytest.raises(AppLoadError, match="'Nested.Missing.app'"):
        load_app("tests.apps.broken:Nested.Missing.app")


@pytest.mark.parametrize("spec", ["tests.apps.basic", "tests.apps.basic:", ":app"])
def test_spec_without_module_and_attribute(spec):
    with pytest.raises(AppLoadError, match="module:attribute"):
        load_app(spec)


def test_import_error_inside_the_app_module_propagates_unchanged():
    sys.modules.pop("tests.apps.import_error", None)
    with pytest.raises(ModuleNotFoundError) as info:
        load_app("tests.apps.import_error:app")
    assert not isinstance(info.value, AppLoadError)
    assert info.value.name == "this_module_does_not_exist"
