# The one function of k_diffusion/utils.py that k_diffusion/sampling.py uses, copied unchanged
# (crowsonkb/k-diffusion at 4601bf085320592473f681a62808ed873d17fad5, MIT, see LICENSE).
def append_dims(x, target_dims):
    """Appends dimensions to the end of a tensor until it has target_dims dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f'input has {x.ndim} dims but target_dims is {target_dims}, which is less')
    return x[(...,) + (None,) * dims_to_append]
