"""What a model's pipeline declares, known before any weights load and without importing diffusers:
the pipeline class (``_class_name`` of the model's ``model_index.json``), the class the recipe's
task runs (``AutoPipelineFor*``'s mapping), the parameters of its ``__call__`` with their
annotations and defaults, the scheduler class names, the VAE's scale factor and the default
image size (from the components' ``config.json``).

The class declarations are read from the installed diffusers' source files with :mod:`ast`
(never executed): ``--dry-run`` gets the same checks as a run without paying for torch. Light
module: no torch, no diffusers import. Anything it cannot find is None: the checks that need it
wait for the loaded pipeline (which checks call parameters again).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..base.paths import atomic_write, cache_dir
from ..base.safe_read import MAX_CONFIG_BYTES, read_text
from ..plan.checks import ANY, BOOL, FLOAT, INT, NONE, STR, Parameter, T, from_default, union

TASK_MAPPINGS = {"image-to-image": "AUTO_IMAGE2IMAGE_PIPELINES_MAPPING",
                 "inpainting": "AUTO_INPAINT_PIPELINES_MAPPING"}


@dataclass
class ModelInfo:
    """What the model folder (or the Hub cache) says, before loading it."""

    class_name: str  # model_index.json's _class_name
    folder: Path | None = None
    index: dict[str, Any] = field(default_factory=dict)
    vae_scale_factor: int | None = None
    default_size: tuple[int, int] | None = None  # (height, width) when the recipe sets neither
    scheduler_class: str | None = None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_text(path, MAX_CONFIG_BYTES, what="config file"))  # a FIFO at its name: None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def from_folder(folder: Path, config: Any = None) -> ModelInfo | None:
    """ModelInfo of a diffusers-layout folder; ``config(subpath)`` reads a file when the folder
    is not complete (the Hub cache holds the files fetched so far)."""
    read = config or (lambda sub: read_json(folder / sub))
    index = read("model_index.json")
    if not index or not isinstance(index.get("_class_name"), str):
        return None
    info = ModelInfo(index["_class_name"], folder, index)
    scheduler = index.get("scheduler")
    if isinstance(scheduler, list) and len(scheduler) == 2 and isinstance(scheduler[1], str):
        info.scheduler_class = scheduler[1]
    vae = read("vae/config.json") if "vae" in index else None
    channels = vae.get("block_out_channels") if vae else None
    if isinstance(channels, list) and channels:
        info.vae_scale_factor = 2 ** (len(channels) - 1)
    for denoiser in ("unet", "transformer", "prior"):
        if denoiser in index:
            cfg = read(f"{denoiser}/config.json")
            size = cfg.get("sample_size") if cfg else None
            if isinstance(size, int) and info.vae_scale_factor:
                info.default_size = (size * info.vae_scale_factor, size * info.vae_scale_factor)
            break
    return info


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, from the same environment variables (without importing it)."""
    import os

    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    return Path(home).expanduser() / "hub"


def hub_snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of ``repo`` at ``revision`` (a commit, or a branch/tag the cache
    has resolved before), or None."""
    if repo.count("/") > 1 or not repo.strip("/"):
        return None
    root = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    commit = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None
    if commit is None:
        try:
            commit = read_text(root / "refs" / (revision or "main"), 4096).strip()
        except OSError:
            return None
    folder = root / "snapshots" / commit
    return folder if folder.is_dir() else None


def hub_cached(repo: str, revision: str | None) -> ModelInfo | None:
    """ModelInfo of a Hub model from the local Hub cache only (no network, no import)."""
    folder = hub_snapshot(repo, revision)
    return from_folder(folder) if folder is not None else None


# --- the installed diffusers' source ----------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def diffusers_root() -> Path | None:
    try:
        spec = importlib.util.find_spec("diffusers")  # finds it without importing it
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent if spec and spec.origin else None


def _index_path(root: Path, sub: str) -> Path:
    """Where the class index of ``diffusers/<sub>`` is remembered: one file per installed diffusers
    (its version, location and the folder's modification time), in the recipe-runner cache."""
    try:
        version = metadata.version("diffusers")
        stamp = (root / sub).stat().st_mtime_ns
    except (metadata.PackageNotFoundError, OSError):
        version, stamp = "unknown", 0
    key = hashlib.sha256(f"{version}|{root}|{sub}|{stamp}".encode()).hexdigest()[:16]
    return cache_dir() / "diffusers-source" / f"{sub}-{version}-{key}.json"


@functools.lru_cache(maxsize=2)
def _classes_in(sub: str) -> dict[str, Path]:
    """Class name -> the diffusers source file that defines it, in diffusers/<sub>/. Scanning the
    folder reads hundreds of files (about 0.3 s): the index is remembered per installed diffusers."""
    root = diffusers_root()
    found: dict[str, Path] = {}
    if root is None:
        return found
    remembered = _index_path(root, sub)
    try:
        return {name: root / rel for name, rel in json.loads(remembered.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        pass
    pattern = re.compile(r"^class (\w+)\b", re.M)
    for path in sorted((root / sub).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for name in pattern.findall(text):
            found.setdefault(name, path)
    try:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(remembered, json.dumps({n: p.relative_to(root).as_posix() for n, p in found.items()}).encode())
    except OSError:  # a read-only cache folder: scanned again next time
        pass
    return found


@functools.lru_cache(maxsize=64)
def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _class_node(name: str) -> ast.ClassDef | None:
    path = _classes_in("schedulers").get(name) if name.endswith("Scheduler") else None
    path = path or _classes_in("pipelines").get(name)
    tree = _parse(path) if path else None
    if tree is None:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


def scheduler_names() -> list[str]:
    """Every scheduler class the installed diffusers defines."""
    return sorted(n for n in _classes_in("schedulers") if n.endswith("Scheduler"))


def task_class(class_name: str, task: str) -> str | None:
    """The class ``AutoPipelineFor<task>`` makes of a model whose index names ``class_name``."""
    mapping_name = TASK_MAPPINGS.get(task)
    if mapping_name is None:
        return class_name
    root = diffusers_root()
    tree = _parse(root / "pipelines" / "auto_pipeline.py") if root else None
    if tree is None:
        return None
    mappings: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            pairs = _mapping_pairs(node.value)
            if pairs is not None:
                mappings[node.targets[0].id] = pairs
    for name, pairs in mappings.items():
        if name == mapping_name and class_name in pairs.values():
            return class_name  # already the task's class
    for pairs in mappings.values():
        for model, cls in pairs.items():
            if cls == class_name:
                target = mappings.get(mapping_name, {}).get(model)
                if target:
                    return target
    return None


def _mapping_pairs(node: ast.expr) -> dict[str, str] | None:
    """``OrderedDict([("stable-diffusion", StableDiffusionPipeline), ...])`` -> {key: class name}."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List)):
        return None
    pairs: dict[str, str] = {}
    for item in node.args[0].elts:
        if (isinstance(item, ast.Tuple) and len(item.elts) == 2 and isinstance(item.elts[0], ast.Constant)
                and isinstance(item.elts[1], ast.Name)):
            pairs[str(item.elts[0].value)] = item.elts[1].id
    return pairs


def _method(name: str, method: str, depth: int = 0) -> ast.FunctionDef | None:
    node = _class_node(name)
    if node is None or depth > 5:
        return None
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == method:
            return item
    for base in node.bases:
        if isinstance(base, ast.Name):
            found = _method(base.id, method, depth + 1)
            if found is not None:
                return found
    return None


def parameters(class_name: str, method: str = "__call__") -> dict[str, Parameter] | None:
    """The named parameters of ``class_name.<method>`` (``self``, ``*args``, ``**kwargs`` aside)."""
    func = _method(class_name, method)
    if func is None:
        return None
    args = func.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    found: dict[str, Parameter] = {}
    for arg, default in pairs:
        if arg.arg == "self":
            continue
        declared = annotation(arg.annotation) if arg.annotation is not None else None
        if declared is None:
            declared = from_default(_literal(default)) if default is not None else ANY
        found[arg.arg] = Parameter(arg.arg, declared, default is not None)
    return found


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


_NAMES = {"int": INT, "float": FLOAT, "bool": BOOL, "str": STR, "None": NONE, "Any": ANY,
          "dict": T("dict"), "Dict": T("dict"), "list": T("list", (ANY,)), "List": T("list", (ANY,))}


def annotation(node: ast.expr | None) -> T:
    """An annotation's AST as a :class:`T` (unknown names: "any", they take no TOML value check)."""
    if node is None:
        return ANY
    if isinstance(node, ast.Constant):
        if node.value is None:
            return NONE
        if isinstance(node.value, str):  # a string annotation
            try:
                return annotation(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return ANY
        if node.value is Ellipsis:
            return T("ellipsis")
        return ANY
    if isinstance(node, ast.Name):
        return _NAMES.get(node.id, T("any", name=node.id))
    if isinstance(node, ast.Attribute):
        return T("any", name=ast.unparse(node))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return union(annotation(node.left), annotation(node.right))
    if isinstance(node, ast.Subscript):
        head = node.value.id if isinstance(node.value, ast.Name) else ast.unparse(node.value).rsplit(".", 1)[-1]
        inner = node.slice
        items = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
        if head == "Optional":
            return union(annotation(items[0]), NONE)
        if head == "Union":
            return union(*(annotation(i) for i in items))
        if head in ("list", "List", "Sequence"):
            return T("list", (annotation(items[0]),))
        if head in ("tuple", "Tuple"):
            parts = tuple(annotation(i) for i in items)
            if len(parts) == 2 and parts[1].kind == "ellipsis":
                return T("list", (parts[0],))
            return T("tuple", parts)
        if head in ("dict", "Dict"):
            return T("dict")
        return T("any", name=ast.unparse(node))
    return ANY
