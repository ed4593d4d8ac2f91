"""recipe-runner: declarative, reproducible batch runner for Hugging Face diffusers pipelines.

Plugin authors: ``from recipe_runner import hookimpl``; the hooks are documented in ``recipe_runner.plugin_api.hookspecs``.

Nothing is imported here at import time (``hookimpl`` is made on first use): ``python -m
recipe_runner`` installs its signal handling before anything else loads (see
:mod:`recipe_runner.base.interrupts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import pluggy

    hookimpl: pluggy.HookimplMarker

__all__ = ["hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        import pluggy

        marker = pluggy.HookimplMarker("recipe_runner")
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
