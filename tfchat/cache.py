"""The per-user cache directory: extracted sources, evaluation helpers, built kernels.

`$TFCHAT_CACHE_DIR`, default `~/.cache/tfchat`. Everything in it can be rebuilt.

Example:

>>> import os
>>> os.path.basename(default_cache_dir()) if "TFCHAT_CACHE_DIR" not in os.environ else "tfchat"
'tfchat'
"""

from __future__ import annotations

import os

CACHE_ENV = "TFCHAT_CACHE_DIR"


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "tfchat")
