"""Markov chains on the fused kernels: ULA, MALA and annealed Langevin (``langevin``), Hamiltonian Monte Carlo
(``hmc``) and NUTS (``nuts``), the EBM training pieces that run them (``ebm``: negatives, persistent chains, the
replay buffer, the losses), and the convergence diagnostics (``diagnostics``: bulk and tail ESS, rank-normalized
split R-hat, arviz's summary columns)."""

from . import diagnostics, ebm
from .diagnostics import ess, rhat, summary
from .ebm import PersistentChains, ReplayBuffer, contrastive_loss, kl_loss, langevin_negatives, nce_loss
from .hmc import HMCResult, hmc
from .langevin import annealed_langevin, langevin, mala
from .nuts import nuts

__all__ = ["HMCResult", "PersistentChains", "ReplayBuffer", "annealed_langevin", "contrastive_loss", "diagnostics",
           "ebm", "ess", "hmc", "kl_loss", "langevin", "langevin_negatives", "mala", "nce_loss", "nuts", "rhat",
           "summary"]
