"""The libraries' own chatter kept out of the user's terminal: load-time notes, progress bars and
warnings of diffusers, transformers and huggingface_hub (errors still show). Light module."""

from __future__ import annotations

import logging


def quiet_environment() -> None:
    """Ask diffusers, transformers and huggingface_hub, before they are imported, for errors only
    and no progress bars (their import-time notes, such as transformers' "requires torchvision"
    warnings, and the "Writing model shards" bar of building the tiny models on first use). Sets
    environment variables only where the user has not: ``TRANSFORMERS_VERBOSITY=info`` still
    shows everything. Imports nothing: the CLI calls it first, whatever the mode."""
    import os

    for env in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(env, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """diffusers, transformers and huggingface_hub print load-time chatter and progress bars;
    keep errors only (must run before they are imported to silence their import-time notes)."""
    quiet_environment()
    try:
        from diffusers.utils import logging as dlogging

        dlogging.set_verbosity_error()
        dlogging.disable_progress_bar()
        from transformers.utils import logging as tlogging

        tlogging.set_verbosity_error()
        tlogging.disable_progress_bar()
    except Exception:  # pragma: no cover - logging is cosmetic
        pass
