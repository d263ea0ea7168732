"""A recipe's `fitness: module:function`, imported from beside the recipe or from an installed module."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Callable, Optional

from evomerge.errors import SECTION, EvomergeError


def load_custom_fitness(spec: str, directory: Path, source: Optional[Path] = None) -> Callable:
    """Import `module:function`: a module file beside the recipe first, else an installed module.

    Only ever called when the recipe names a fitness function.
    """
    module_name, function_name = spec.split(":")
    key = f"{SECTION}.fitness"
    beside = directory / (module_name.replace(".", "/") + ".py")
    try:
        if beside.is_file():
            loader_spec = importlib.util.spec_from_file_location(f"evomerge_fitness_{abs(hash(beside))}", beside)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise EvomergeError(f"cannot import {module_name!r}: {error}", path=source, key=key) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise EvomergeError(f"{module_name!r} has no function {function_name!r}", path=source, key=key)
    return function
