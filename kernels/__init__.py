"""Triton twins of the CUDA kernels: every module here is a loop's ``kernels/<loop>.py``, imported
(found, not listed) so that fastgen.ops' registry can register its functions in the
``fastgen_triton`` namespace. Importing this package needs triton."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    globals()[_module.name] = importlib.import_module(f"{__name__}.{_module.name}")
