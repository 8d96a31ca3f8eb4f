"""What the vendored diffusers tests import from diffusers' tests/others/test_utils.py: the staging Hub's
credentials and its decorator. The Hub cannot be reached here, so the staging tests are skipped, as diffusers
skips them unless HUGGINGFACE_CO_STAGING is set."""

import unittest

USER = "__DUMMY_TRANSFORMERS_USER__"
TOKEN = None


def is_staging_test(test_case):
    return unittest.skip("needs the Hugging Face staging Hub")(test_case)
