import pytest

from sparsity_core import registry as reg
from sparsity_core.registry import CRITERIA, Registry, UnknownNameError


def test_register_build_and_list():
    r = Registry("widget")

    @r.register("Foo")
    class Foo:
        def __init__(self, x=1):
            self.x = x

    assert r.names() == ["foo"]
    assert "FOO" in r and "bar" not in r
    assert r.build("foo", x=3).x == 3
    obj = Foo()
    assert r.build(obj) is obj


def test_unknown_name_lists_valid_and_suggests():
    with pytest.raises(UnknownNameError) as err:
        CRITERIA.get("magnitud")
    msg = str(err.value)
    assert "Did you mean 'magnitude'?" in msg
    assert "random" in msg and "taylor" in msg
    assert isinstance(err.value, KeyError)


def test_duplicate_registration_is_an_error():
    r = Registry("widget")
    r.register("a", object())
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", object())


def test_kwargs_with_an_instance_are_rejected():
    with pytest.raises(ValueError, match="keyword arguments"):
        Registry("widget").build(object(), x=1)


def test_entry_point_plugins_are_loaded_on_unknown_name(monkeypatch):
    r = Registry("widget")

    class EP:
        name = "thirdparty"

        def load(self):
            return lambda: r.register("from_plugin", "hello")

    monkeypatch.setattr(reg, "_plugins_loaded", False)
    monkeypatch.setattr(reg.metadata, "entry_points", lambda group: [EP()] if group == reg.ENTRY_POINT_GROUP else [])
    assert r.get("from_plugin") == "hello"


def test_broken_plugin_is_skipped_with_warning(monkeypatch, caplog):
    class Broken:
        name = "broken"

        def load(self):
            raise ImportError("missing dependency")

    monkeypatch.setattr(reg, "_plugins_loaded", False)
    monkeypatch.setattr(reg.metadata, "entry_points", lambda group: [Broken()])
    assert reg.load_plugins() == []
    assert "broken" in caplog.text
