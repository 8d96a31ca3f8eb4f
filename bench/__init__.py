"""fastgen benchmarks, installed as ``fastgen.bench``: every ``bench_<suite>.py`` here is a suite with
``run(device, out, max_log2) -> markdown``, found by :func:`suites` (no list to edit).

    python -m bench langevin [--device cpu|cuda] [--out DIR]     # from a source tree
    fastgen bench langevin                                       # from an installed package
"""

from __future__ import annotations

import importlib
import pkgutil


def suite_names() -> list[str]:
    """The suites here (bench_<name>.py), without importing them."""
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(__path__) if m.name.startswith("bench_"))


def suites() -> dict:
    """Suite name -> its run function, for every bench_<name> module of this package."""
    return {name: importlib.import_module(f"{__name__}.bench_{name}").run for name in suite_names()}
