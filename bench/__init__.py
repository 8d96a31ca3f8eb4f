"""fastgen benchmarks: `python -m bench langevin [--device cpu|cuda] [--out DIR]`."""
