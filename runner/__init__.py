"""recipe-runner: declarative, reproducible batch runner for Hugging Face diffusers pipelines.

Plugin authors: ``from recipe_runner import hookimpl``; the hooks are documented in ``recipe_runner.plugin_api.hookspecs``.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("recipe_runner")

__all__ = ["hookimpl", "__version__"]
