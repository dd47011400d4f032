import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_folder_is_listed_in_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("sparsity_core", "sparsity_core"), ("plugins", "sparsity_plugins")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, top))
                found.add(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    assert found == listed


def test_extras_cover_every_plugin_and_all():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert {"vision", "graph", "splat", "video", "peft", "all", "dev"} <= set(extras)


def test_import_core_does_not_import_lightning_or_plugins():
    code = ("import sys, sparsity_core; "
            "bad = [m for m in ('pytorch_lightning', 'lightning', 'torch_geometric', 'gsplat', 'diffusers', 'timm') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_plugins_package_imports_as_sparsity_plugins():
    import sparsity_plugins

    assert os.path.samefile(os.path.dirname(sparsity_plugins.__file__), os.path.join(ROOT, "plugins"))
