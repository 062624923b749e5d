"""Old name of tools/sample_media.py, kept for the add-on tests that still `import media`."""

from tools.sample_media import *  # noqa: F401,F403
