"""Apart from the library: the command line (``main``), large-batch generation to sharded files (``generation``),
the demo and the seeds' toy EBM (``demo``, ``toy_ebm``)."""

from .generation import generate, load, verify
from .main import main, parser

__all__ = ["generate", "load", "main", "parser", "verify"]
