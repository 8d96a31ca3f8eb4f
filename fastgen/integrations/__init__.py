"""Peers' interfaces over fastgen's fused step, signatures kept: ``diffusers`` (scheduler drop-ins; imports
diffusers) and ``k_diffusion`` (k-diffusion's samplers). Neither is imported until asked for."""
