"""Diffusion and score-SDE models: the forward processes and schedules (``processes``), whole sampling loops over
the fused step (``samplers``), likelihoods through the probability-flow ODE (``likelihood``), the training
losses (``training``) and consistency models (``consistency``)."""

from . import processes  # noqa: I001  (first: the samplers and the ops' reference read it)
from . import consistency, samplers, training
from .consistency import ConsistencyFunction, consistency_distillation_loss, consistency_training_loss, ct_steps
from .likelihood import Likelihood, likelihood
from .processes import SDE, VESDE, VPSDE, DDPMSchedule, EDMConsistency, SubVPSDE, TrigFlowConsistency, get_sigmas_karras
from .samplers import SAMPLERS, make_sampler, sample
from .training import EMA, ddpm_loss, dsm_loss, ism_loss, ssm_loss

__all__ = ["EMA", "SAMPLERS", "SDE", "VESDE", "VPSDE", "ConsistencyFunction", "DDPMSchedule", "EDMConsistency",
           "Likelihood", "SubVPSDE", "TrigFlowConsistency", "consistency", "consistency_distillation_loss",
           "consistency_training_loss", "ct_steps", "ddpm_loss", "dsm_loss", "get_sigmas_karras", "ism_loss",
           "likelihood", "make_sampler", "processes", "sample", "samplers", "ssm_loss", "training"]
