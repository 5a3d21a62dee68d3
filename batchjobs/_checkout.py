"""Run from a source checkout: where the built-in strategies are.

They live in the checkout's ``strategies/`` and install as ``batchjobs.strategies``
(an editable install maps the name itself). A script started in a checkout's root
imports the checkout's ``batchjobs/`` even when a wheel is installed, and would not
find them: this finder gives that one name its folder, and nothing else.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

NAME = "batchjobs.strategies"


class _StrategiesFolder(importlib.abc.MetaPathFinder):
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(
            fullname,
            os.path.join(self.folder, "__init__.py"),
            submodule_search_locations=[self.folder],
        )


def find_strategies(package_dir: str) -> None:
    """If the package in ``package_dir`` is a checkout's (no ``strategies`` inside it, a
    ``strategies/`` package beside it), make ``batchjobs.strategies`` that folder."""
    folder = os.path.join(os.path.dirname(package_dir), "strategies")
    if os.path.isdir(os.path.join(package_dir, "strategies")):
        return  # installed: the strategies are inside
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        return
    if not any(isinstance(finder, _StrategiesFolder) for finder in sys.meta_path):
        sys.meta_path.append(_StrategiesFolder(folder))  # after the editable install's
