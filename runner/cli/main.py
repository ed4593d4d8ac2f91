"""``recipe-run``: the command line. Exit status 0 success, 1 failure while running, 2 invalid
recipe or command line (one message, no traceback, nothing written), 130 interrupted.

This module, and everything it imports at the top, stays free of torch and diffusers: --help,
--dry-run, --list-plugins and validation never pay for them.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .. import __version__
from ..base import report
from ..base.errors import RecipeError, RunError
from ..base.quiet import quiet_environment

if TYPE_CHECKING:
    from ..plugin_api.manager import Plugins

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own usage errors: exit 2, one line
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="recipe-run",
        description="Run diffusers pipelines from TOML recipes: reproducible batches, one generator per image.",
    )
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe files (TOML)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output root (default: outputs); a recipe writes to DIR/<name>/")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key: dotted path, TOML value (a bare word that is not TOML is a string)")
    p.add_argument("-p", "--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="load one more plugin module (importable name)")
    p.add_argument("--strict-plugins", action="store_true",
                   help="refuse to run (exit 2) when an installed plugin failed to load; without it, a warning")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the plan; loads no model, imports neither torch nor diffusers")
    p.add_argument("--watch", action="store_true",
                   help="run, then keep the pipelines loaded and run again on every save of a recipe, of a file "
                        "it extends or of an input image (only new or changed jobs); Ctrl-C ends it")
    p.add_argument("--list-plugins", action="store_true", help="list the installed plugins and their settings")
    p.add_argument("--reproduce", type=Path, metavar="IMAGE",
                   help="re-generate one image from the recipe embedded in it, into a scratch folder (or --out); "
                        "exit 0 pixel-identical, 1 differs")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two runs (folders or their manifest.json), or two output roots (runs paired by folder "
                        "name): pairs by job, pixels and recipe; report into --out (default compare-report); "
                        "exit 0 identical (or close: --min-psnr, --max-diff), 1 differs, 2 bad input")
    p.add_argument("--min-psnr", type=_psnr, default=None, metavar="DB",
                   help="with --compare: a pair whose pixels differ counts as close (exit 0) when its PSNR is at "
                        "least DB (and within --max-diff when given)")
    p.add_argument("--max-diff", type=_levels, default=None, metavar="N",
                   help="with --compare: a pair whose pixels differ counts as close (exit 0) when no pixel differs "
                        "by more than N levels of 255 (and within --min-psnr when given)")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of the recipe format (plugin tables included)")
    p.add_argument("--lock", action="store_true",
                   help="write each recipe's lock file beside it, the recipe's name with .lock for .toml "
                        "(recipes/warrior.toml -> recipes/warrior.lock: model commits and weight hashes), and exit")
    p.add_argument("--locked", action="store_true",
                   help="refuse to run (exit 2) when a model differs from the lock file (with --reproduce: the lock "
                        "of the recipe the image came from)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickled (.bin/.ckpt) weights; never implied by a recipe")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model.custom_pipeline / model.trust_remote_code (with a pinned commit revision); "
                        "never implied by a recipe")
    p.add_argument("--force", action="store_true",
                   help="regenerate every image, even unchanged ones (one with the same pixels keeps its file; the others "
                        "replaced are kept in the run's history folder); also takes over a run folder made by another "
                        "recipe file")
    p.add_argument("--update-baseline", action="store_true",
                   help="run the recipes into --out DIR as a committed baseline: no history folder and no .gitignore, "
                        "images whose pixels changed replaced in place, files no job makes any more removed, "
                        "pixel-identical images left untouched")
    p.add_argument("--wait", action="store_true",
                   help="when another recipe-run is writing into the same output folder, wait for it to end "
                        "(default: refuse at once, exit 2, naming it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure while running")
    p.add_argument("--version", action="version", version=f"recipe-run {__version__}")
    return p


def _psnr(text: str) -> float:
    """``--min-psnr``: a finite number of dB, at least 0 (argparse says the rest: exit 2)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of dB (e.g. 40), got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of dB >= 0 (e.g. 40), got {text!r}")
    return value


def _levels(text: str) -> int:
    """``--max-diff``: a whole number of pixel levels, 0 to 255."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixel levels 0-255 (e.g. 2), got {text!r}") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"expected pixel levels 0-255, got {value}")
    return value


def list_plugins(plugins: Plugins) -> str:
    from ..plugin_api.manager import EXTENSION_POINTS
    from ..recipe.settings_docs import settings_lines

    lines = []
    for info in plugins.infos:
        origin = f"{info.distribution or '?'} {info.version or ''}".strip()
        lines.append(f"{info.name}  [{info.source}; {origin}; {info.module}]")
        if info.error:
            lines.append(f"    failed to load: {info.error}")
        for name in info.provides:
            label, _, kind_name = name.partition(" ")
            point = next((p for p in EXTENSION_POINTS if p[3] == label and kind_name), None)
            if point is not None:  # an axis kind, a model source, an output format, a metric
                kind = point[1].require(kind_name)
                lines.append(f"    [{point[1].what}] {kind_name}: {getattr(kind, 'description', '')}")
                continue
            qualified = f"{info.name}:{name}"
            opt = plugins.registry.qualified.get(qualified)
            if opt is None:  # its plugin failed to load
                continue
            shared, owner = plugins.registry.shared.get(name), plugins.registry.provider(name)
            if shared and owner != info.name:  # another plugin's too: say how a recipe picks this one
                alone = (f"{owner!r}'s" if owner else "refused: also provided by "
                         + ", ".join(repr(p) for p in shared if p != info.name))
                name = f'{name} as "{qualified}" ({name} alone: {alone})'
            lines.append(f"    [optimizations] {name} (stage {opt.stage}): {opt.description}")
            lines += [f"        {line}" for line in settings_lines(opt.settings)]
        plugin = None if info.error else plugins.pm.get_plugin(info.name)
        callers = plugins.pm.get_hookcallers(plugin) if plugin is not None else None
        if callers:
            lines.append(f"    hooks: {', '.join(sorted(c.name for c in callers))}")
    return "\n".join(lines)


def console() -> None:
    """The ``recipe-run`` command and ``python -m recipe_runner``: :func:`main`, then exit.

    The interpreter's last act before exiting is a full garbage collection that walks every object
    torch, diffusers and transformers created: over a second here, with nothing left to do. By now
    every file is written, closed and synced and every stream flushed, so ``gc.freeze()`` moves
    those objects out of its way; objects are still released, and exit handlers still run.

    Until a run begins writing, Ctrl-C or SIGTERM ends the process at once with one line
    (:func:`recipe_runner.interrupts.startup`; ``python -m recipe_runner`` installs it before
    importing this module).
    """
    from ..base.interrupts import restore, startup

    startup()
    try:
        code = main()
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
            code = code or EXIT_FAILED
        gc.freeze()
    finally:
        restore()  # for a program that called this in-process
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    quiet_environment()  # before any mode may import diffusers (--lock builds tiny models on first use)
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except RecipeError as exc:
        for problem in exc.problems:
            report.error(str(problem))
        return EXIT_INVALID
    except BrokenPipeError:  # `recipe-run --dry-run r.toml | head -1`: the reader is gone; end quietly
        _stdout_to_devnull()
        return EXIT_FAILED
    except KeyboardInterrupt as exc:  # Ctrl-C (130) or SIGTERM (143): the writes in progress finished
        from ..base.interrupts import exit_code

        code = exit_code(exc)
        what = "interrupted" if code == EXIT_INTERRUPTED else "terminated"
        start = "\n" if _is_terminal(sys.stderr) else ""  # after the "^C" a terminal echoes; else one line
        print(f"{start}{what}: {_images_written()} image(s) written by this run, every one complete and listed in "
              "its manifest; run the same command again to finish", file=sys.stderr)
        return code
    except RunError as exc:
        if args.debug:
            raise
        report.error(str(exc))
        return EXIT_FAILED
    except Exception as exc:  # a failure while running: the message, the traceback with --debug
        if args.debug:
            raise
        report.error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return EXIT_FAILED


# --- modes ------------------------------------------------------------------------------------------
# One mode per invocation. Each option names the modes it means something in; any other
# combination is refused (exit 2) naming both flags, never silently ignored.

MODES = {  # mode -> its flag
    "dry_run": "--dry-run",
    "list_plugins": "--list-plugins",
    "schema": "--schema",
    "reproduce": "--reproduce",
    "lock": "--lock",
    "compare": "--compare",
    "watch": "--watch",
    "update_baseline": "--update-baseline",
}
RUN = "run"  # no mode flag: run the recipes
BASELINE = "update_baseline"  # a run into a committed baseline folder
RECIPE_MODES = {RUN, "dry_run", "lock", "watch", BASELINE}  # the modes that take RECIPE arguments
APPLIES = {  # option (dest) -> (its flag, the modes it applies to)
    "recipes": ("RECIPE", RECIPE_MODES),
    "sets": ("--set", RECIPE_MODES),
    "out": ("--out", {RUN, "dry_run", "reproduce", "compare", "watch", BASELINE}),
    "min_psnr": ("--min-psnr", {"compare"}),
    "max_diff": ("--max-diff", {"compare"}),
    "locked": ("--locked", {RUN, "dry_run", "watch", "reproduce", BASELINE}),
    "plugins": ("-p", {RUN, "dry_run", "lock", "list_plugins", "schema", "reproduce", "watch", BASELINE}),
    "allow_pickle": ("--allow-pickle", {RUN, "dry_run", "lock", "reproduce", "watch", BASELINE}),
    "trust_remote_code": ("--trust-remote-code", {RUN, "dry_run", "lock", "reproduce", "watch", BASELINE}),
    "no_progress": ("--no-progress", {RUN, "dry_run", "lock", "reproduce", "watch", BASELINE}),  # harmless where nothing is drawn
    "force": ("--force", {RUN, BASELINE}),
    "wait": ("--wait", {RUN, "reproduce", "watch", BASELINE}),
    "strict_plugins": ("--strict-plugins", {RUN, "dry_run", "lock", "reproduce", "schema", "watch", BASELINE}),
}


def mode_of(args: argparse.Namespace) -> str:
    """The one mode this invocation asks for; RecipeError (exit 2) for a combination that makes no sense."""
    asked = [mode for mode in MODES if getattr(args, mode) not in (None, False)]
    if len(asked) > 1:
        first, second = (MODES[m] for m in asked[:2])
        raise RecipeError.one(f"{first} and {second} cannot be combined: one mode per invocation", file="recipe-run")
    mode = asked[0] if asked else RUN
    for dest, (flag, modes) in APPLIES.items():
        value = getattr(args, dest)
        if value is None or value is False or value == [] or mode in modes:  # --max-diff 0 is given, not absent
            continue
        raise RecipeError.one(f"{MODES[mode]} takes no recipes" if dest == "recipes"
                              else f"{flag} has no effect with {MODES[mode]}: leave one of them out", file="recipe-run")
    if mode == BASELINE and args.out is None:  # never the default outputs/: a baseline is a folder of its own
        raise RecipeError.one("--update-baseline needs --out DIR: the baseline's folder (e.g. --out baseline)",
                              file="recipe-run")
    if mode in RECIPE_MODES and not args.recipes:
        usage = f"recipe-run {MODES[mode]} RECIPE [RECIPE ...]" if mode != RUN else "recipe-run RECIPE [RECIPE ...]"
        raise RecipeError.one(f"no recipe given: {usage}", file="recipe-run")
    return mode


def _images_written() -> int:
    """Images written by this process: the outputs module is loaded only once a run wrote any."""
    outputs = sys.modules.get("recipe_runner.records.outputs")
    return outputs.images_written() if outputs is not None else 0


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _stdout_to_devnull() -> None:
    """What Python's docs recommend on SIGPIPE: point stdout at devnull, so that the interpreter's
    final flush of the lost output raises nothing either."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass


def _main(args: argparse.Namespace) -> int:
    from ..plugin_api.manager import load_plugins

    mode = mode_of(args)
    if mode in ("compare", "watch"):  # they clean up after themselves on KeyboardInterrupt
        from ..base.interrupts import ordinary

        ordinary()
    if mode == "compare":  # files only: no plugins, no torch
        from ..views import compare

        return compare.main(args.compare[0], args.compare[1], args.out, compare.Thresholds(args.min_psnr, args.max_diff))
    plugins = load_plugins(args.plugins)
    if mode == "list_plugins":
        report.result(list_plugins(plugins))
        return EXIT_OK
    from ..base.report import warn
    from ..plugin_api.failures import check as check_plugins

    if args.debug:  # each failed plugin's traceback, before the line naming it
        for info in plugins.infos:
            if info.error and info.traceback:
                report.note(f"plugin {info.name!r} failed to load:\n{info.traceback.rstrip()}")
    check_plugins(plugins, args.strict_plugins, warn)
    if mode == "schema":
        from .schema import dumps

        report.result(dumps(plugins))
        return EXIT_OK
    if mode == "reproduce":
        from ..running.reproduce import reproduce

        outcome = reproduce(args.reproduce, plugins, args.out, allow_pickle=args.allow_pickle,
                            trust_remote_code=args.trust_remote_code, warn=warn, wait=args.wait, locked=args.locked)
        report.result(outcome.report())
        return EXIT_OK if outcome.identical else EXIT_FAILED

    from ..running.prepare import Options, prepare_all
    from .dry_run import describe_plan

    out = args.out if args.out is not None else Path("outputs")
    options = Options(out=out, allow_pickle=args.allow_pickle,
                      trust_remote_code=args.trust_remote_code, force=args.force,
                      progress=False if args.no_progress else None, wait=args.wait, baseline=mode == BASELINE,
                      new_root=not (out.exists() or out.is_symlink()))
    if mode == "watch":
        from ..running.watch import watch

        return watch([Path(p) for p in args.recipes], args.sets, plugins, options, locked=args.locked, debug=args.debug)
    prepared = prepare_all(args.recipes, args.sets, plugins, options, locked=args.locked)
    if mode == "lock":
        from ..pipelines import lock

        for item in prepared:
            report.result(f"{item.recipe.name}: locked -> {lock.write_lock(item.recipe, item.loaded)}")
        return EXIT_OK
    if mode == "dry_run":
        from .dry_run import check_optimizations

        checked = check_optimizations(prepared, options)  # the run's checks before loading: its refusals too
        report.result("\n\n".join(describe_plan(p, plugins, checked=c) for p, c in zip(prepared, checked)))
        return EXIT_OK
    from ..running.session import Session

    Session(plugins, options).run(prepared)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    console()
