"""``[matrix.axes]`` kinds: what an axis varies, one class per kind, in one registry.

Where to add an axis kind: subclass :class:`~recipe_runner.axes.kind.AxisKind` (one file, like
:mod:`.model` or :mod:`.components`) and register it, from a plugin, through the
``register_axis_kinds`` hook (see :mod:`recipe_runner.plugin_api.hookspecs`).
"""
