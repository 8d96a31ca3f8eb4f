"""Triton twins of the CUDA kernels: every module here not named with a leading underscore is a loop's
``kernels/<loop>.py``, imported (found, not listed) so that fastgen.ops' registry can register its functions in
the ``fastgen_triton`` namespace; ``_tiles`` holds helpers the kernels share. Importing this package needs
triton."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name.startswith("_"):
        continue
    globals()[_module.name] = importlib.import_module(f"{__name__}.{_module.name}")
