"""The process environment the command-line entry points set up before anything heavy is imported."""
from __future__ import annotations

import os

# Nothing is downloaded at run time (docs/design.md): huggingface_hub, sentence-transformers and
# open_clip read these when they are first imported, so they are set before any of them is.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def use_offline_environment(headless: bool = False) -> None:
    """Set the offline switches (and, headless, matplotlib's Agg backend) unless the user set them."""
    for key, value in {**OFFLINE, **({"MPLBACKEND": "Agg"} if headless else {})}.items():
        os.environ.setdefault(key, value)
