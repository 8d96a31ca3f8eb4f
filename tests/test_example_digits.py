"""The digits example (examples/digits.py): one training step, a short sampling run, the image grid."""

import pytest
import torch
from conftest import load_example

from fastgen.cli.demo import image_grid

pytest.importorskip("sklearn")
digits = load_example("digits")


def test_one_training_step_and_sampling(tmp_path):
    data = digits.load_digits()
    assert data.shape == (1797, 64) and float(data.min()) >= -1 and float(data.max()) <= 1
    model = digits.ScoreNet(hidden=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = digits.train_step(model, optimizer, data, digits.VPSDE(), 32, torch.Generator().manual_seed(0))
    assert loss > 0 and all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.no_grad():
        x = digits.fastgen.sample(model, (4, 64), sde=digits.VPSDE(), sampler="dpmpp_2m", steps=5, prediction="eps",
                                  seed=0, device="cpu")
    assert torch.isfinite(x).all()
    image_grid(x, str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 0
