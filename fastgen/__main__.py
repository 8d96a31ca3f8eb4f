"""python -m fastgen: the command line (see fastgen.cli)."""

from .cli.main import main

raise SystemExit(main())
