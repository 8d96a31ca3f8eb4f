"""Peers' own test suites, vendored with only the class under test swapped for fastgen's (see each folder's
README)."""
