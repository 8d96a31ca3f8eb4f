"""python -m fastgen: the command line (see fastgen.cli)."""

from .cli import main

raise SystemExit(main())
