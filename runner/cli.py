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

from . import __version__
from .errors import RecipeError, RunError

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: exit 2, one line
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
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the plan; loads no model, imports neither torch nor diffusers")
    p.add_argument("--list-plugins", action="store_true", help="list the installed plugins and their settings")
    p.add_argument("--reproduce", type=Path, metavar="IMAGE",
                   help="re-generate one image from the recipe embedded in it, into a scratch folder (or --out); "
                        "exit 0 pixel-identical, 1 differs")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two runs (folders or their manifest.json): pairs by job, pixels and recipe; "
                        "report into --out (default compare-report); exit 0 identical, 1 differs, 2 bad input")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of the recipe format (plugin tables included)")
    p.add_argument("--lock", action="store_true",
                   help="write RECIPE's lock file (RECIPE.lock: model commits and weight hashes) and exit")
    p.add_argument("--locked", action="store_true", help="refuse to run (exit 2) when a model differs from the lock file")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickled (.bin/.ckpt) weights; never implied by a recipe")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model.custom_pipeline / model.trust_remote_code (with a pinned commit revision); "
                        "never implied by a recipe")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure while running")
    p.add_argument("--version", action="version", version=f"recipe-run {__version__}")
    return p


def list_plugins(plugins) -> str:
    from .optimizations import settings_lines

    lines = []
    for info in plugins.infos:
        origin = f"{info.distribution or '?'} {info.version or ''}".strip()
        lines.append(f"{info.name}  [{info.source}; {origin}; {info.module}]")
        if info.error:
            lines.append(f"    failed to load: {info.error}")
        for name in info.provides:
            opt = plugins.registry.optimizations[name]
            lines.append(f"    [optimizations] {name} (stage {opt.stage}): {opt.description}")
            lines += [f"        {line}" for line in settings_lines(opt.settings)]
    return "\n".join(lines)


def console() -> None:
    """The ``recipe-run`` command and ``python -m recipe_runner``: :func:`main`, then exit.

    The interpreter's last act before exiting is a full garbage collection that walks every object
    torch, diffusers and transformers created: over a second here, with nothing left to do. By now
    every file is written, closed and synced and every stream flushed, so ``gc.freeze()`` moves
    those objects out of its way; objects are still released, and exit handlers still run.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except RecipeError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("\ninterrupted: every image written so far is complete and listed in its manifest", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a failure while running: the message, the traceback with --debug
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


def _main(args: argparse.Namespace) -> int:
    from .plugin_manager import load_plugins
    from .run import Options, describe_plan, prepare
    from .safety import check_recipe

    if args.compare is not None:  # files only: no plugins, no torch
        from . import compare

        return compare.main(args.compare[0], args.compare[1], args.out)
    plugins = load_plugins(args.plugins)
    if args.list_plugins:
        print(list_plugins(plugins))
        return EXIT_OK
    if args.schema:
        from .schema import dumps

        print(dumps(plugins))
        return EXIT_OK
    if args.reproduce is not None:
        from .reproduce import reproduce

        if args.recipes:
            raise RecipeError.one("--reproduce takes an image, not recipes", file="recipe-run")
        from .run import warn

        outcome = reproduce(args.reproduce, plugins, args.out, allow_pickle=args.allow_pickle,
                            trust_remote_code=args.trust_remote_code, warn=warn)
        print(outcome.report())
        return EXIT_OK if outcome.identical else EXIT_FAILED
    args.out = args.out if args.out is not None else Path("outputs")
    if not args.recipes:
        raise RecipeError.one("no recipe given: recipe-run RECIPE [RECIPE ...]", file="recipe-run")
    problems = []
    prepared = []
    for path in args.recipes:  # validate every recipe before anything runs
        try:
            item = prepare(path, args.sets, plugins, args.out)
            check_recipe(item.recipe, item.loaded, trust_remote_code=args.trust_remote_code,
                         allow_pickle=args.allow_pickle)
            prepared.append(item)
        except RecipeError as exc:
            problems += exc.problems
    if problems:
        raise RecipeError(problems)
    names = [p.recipe.name for p in prepared]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RecipeError.one(f"several recipes write to the same output folder {duplicated[0]!r}: give them distinct names",
                              file="recipe-run")
    if args.lock or args.locked:
        from . import lock

        if args.lock:
            for item in prepared:
                print(f"{item.recipe.name}: locked -> {lock.write_lock(item.recipe, item.loaded)}")
            return EXIT_OK
        for item in prepared:
            lock.verify(item.recipe, item.loaded)
    if args.dry_run:
        print("\n\n".join(describe_plan(p, plugins) for p in prepared))
        return EXIT_OK

    from .interrupts import graceful
    from .run import ModelCache, execute

    options = Options(out=args.out, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                      progress=False if args.no_progress else None)
    cache = ModelCache()
    with graceful():  # first Ctrl-C: finish writing, flush the manifest, exit 130; second: at once
        for item in prepared:
            execute(item, plugins, options, cache)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    console()
