"""Import a file that is no package module (an example, a benchmark, a tool script, another
test file) by its path: ``load_script(path, name)`` runs it as the module ``name`` and returns
it (it is not put into ``sys.modules``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_script(path: Path | str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
