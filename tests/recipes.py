"""Load a script of recipes/ as a module, for the recipe tests."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(filename: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(filename).stem, RECIPES / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses of the module look their module up there
    spec.loader.exec_module(module)
    return module
