"""python -m fastgen.ops: every declared op's schema, one per line (the ctest defines them from this)."""

import fastgen.ops

for op in fastgen.ops.REGISTRY.values():
    print(op.schema)
