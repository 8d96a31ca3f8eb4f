"""What the vendored diffusers tests import from diffusers' tests/testing_utils.py: the same objects, from the
copy diffusers ships in diffusers.utils.testing_utils."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from diffusers.utils.testing_utils import CaptureLogger, torch_device  # noqa: F401
