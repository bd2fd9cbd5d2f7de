"""Import a script (or the benchmarks' ``harness`` package) that is not part of the installed package."""

import importlib.util
import sys
from types import ModuleType

from .paths import REPO


def import_script(relative_path: str) -> ModuleType:
    """The module at ``REPO/relative_path`` (a ``.py`` file or a package folder), imported once
    under its file or folder name, as the script itself would import it.

    Example: ``import_script("examples/merge_lora_params.py")``.
    """
    path = REPO / relative_path
    is_package = path.is_dir()
    name = path.name if is_package else path.stem
    if name in sys.modules:
        return sys.modules[name]
    location = path / "__init__.py" if is_package else path
    if not location.is_file():
        raise FileNotFoundError(f"no script at {location}")
    spec = importlib.util.spec_from_file_location(
        name, location, submodule_search_locations=[str(path)] if is_package else None
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: the module's own imports of itself find it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
