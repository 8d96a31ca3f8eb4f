"""The seeds' two-mode toy EBM under maximum likelihood, score matching, NCE and PCD (see fastgen/toy_ebm.py
for the model, the methods and the derivation of NCE's fixed point); the same as ``fastgen toy ebm``.

    python examples/ebm_toy.py [--steps 400] [--lr 0.1] [--out ebm_toy.png]
"""

from fastgen.cli.toy_ebm import main

if __name__ == "__main__":
    raise SystemExit(main())
