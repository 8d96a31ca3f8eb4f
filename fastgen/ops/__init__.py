"""Functional ops over the fused kernels (one module per hot loop), and the op registry.

Each op is declared once in its loop's module (see ``fastgen/ops/_registry.py`` and
``docs/adding-an-op.md``); ``REGISTRY[name]`` is its keyword call. Every loop module here is
imported (found, not listed), so its ops are registered; the names in its ``__all__`` (its public
functions, which check user input once and call the op) are re-exported here. Loops without an
``__all__`` keep their functions under their module (``fastgen.ops.diffusion``).
"""

import importlib
import pkgutil

from ._registry import REGISTRY

__all__ = ["REGISTRY"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
    __all__ += [_info.name, *getattr(_module, "__all__", ())]
del _info, _module, _name
