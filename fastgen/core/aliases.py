"""The module paths of fastgen's earlier flat layout, kept importable: ``import fastgen.sde``,
``from fastgen.k_sampling import sample_euler`` and ``fastgen.gan.d_loss`` reach the modules' homes
(``fastgen.diffusion.processes``, ...) without importing them before they are asked for."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types


class _Alias(importlib.abc.Loader):
    def __init__(self, make):
        self.make = make

    def create_module(self, spec):
        module = self.make()
        self.home_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.home_spec  # the import system set the old path's spec; the module keeps its own


class OldPaths(importlib.abc.MetaPathFinder):
    """Finds ``old`` names of ``table`` (old path -> home module, or a callable building the module)."""

    def __init__(self, table: dict):
        self.table = table

    def module(self, name: str) -> types.ModuleType:
        home = self.table[name]
        return home() if callable(home) else importlib.import_module(home)

    def find_spec(self, name, path=None, target=None):
        if name not in self.table:
            return None
        return importlib.util.spec_from_loader(name, _Alias(lambda: self.module(name)))


def install(package: str, table: dict):
    """Puts the finder for ``table`` on sys.meta_path; returns the package's module ``__getattr__`` for its old
    attribute names (``fastgen.k_sampling`` without an import)."""
    finder = OldPaths(table)
    sys.meta_path.insert(0, finder)
    for old, home in table.items():  # homes loaded already are registered now: a later ``import fastgen.likelihood``
        if isinstance(home, str) and home in sys.modules:  # then finds it and leaves the function of that name
            sys.modules.setdefault(old, sys.modules[home])

    def __getattr__(name: str):
        full = f"{package}.{name}"
        if full in table:
            return importlib.import_module(full)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
