"""fastgen/core/constants.py (the names) and kernels/constants.h (their C++/CUDA mirror) agree."""

import re
from pathlib import Path

from fastgen.core import constants

HEADER = (Path(__file__).resolve().parents[1] / "kernels" / "constants.h").read_text()


def enum(name: str) -> dict:
    body = re.search(rf"enum {name} : int \{{([^}}]*)\}}", HEADER).group(1)
    return {k.strip(): int(v) for k, v in (item.split("=") for item in body.split(","))}


def camel(name: str) -> str:
    return "".join(part.capitalize() if len(part) > 1 else part.upper() for part in name.lower().split("_"))


def test_enums_agree():
    assert enum("Prediction") == {"k" + camel(m.name): m.value for m in constants.Prediction}
    assert enum("AuxStore") == {"kAux" + camel(m.name): m.value for m in constants.AuxStore}
    assert enum("Coef") == {"k" + camel(m.name): m.value for m in constants.Coef}
    assert enum("ScaleMode") == {"k" + camel(m.name): m.value for m in constants.ScaleMode}


def test_scalars_agree():
    scalars = dict(re.findall(r"constexpr int (\w+) = (\d+);", HEADER))
    assert int(scalars["kCoefWidth"]) == constants.COEF_WIDTH == len(constants.Coef)
    assert int(scalars["kMaxGmmDim"]) == constants.MAX_GMM_DIM
    assert int(scalars["kMaxGmmComponents"]) == constants.MAX_GMM_COMPONENTS
