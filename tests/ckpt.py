"""Old name of tools/random_weights.py, kept for tests that still `from ckpt import ...`."""

from tools.random_weights import *  # noqa: F401,F403
