"""Input images for image-to-image and inpainting: local paths (relative to the recipe file that
names them) and https URLs, checked before any model loads and opened before any image is made.

Only image formats are opened; Pillow's decompression-bomb limit is an error, not a warning;
URLs are fetched with a timeout and a size cap, and refused when running offline.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import Problem, RecipeError
from .loading import LoadedRecipe, problem_at
from .matrix import Job

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
URL_TIMEOUT = 30.0
URL_MAX_BYTES = 50 << 20
OFFLINE_ENVS = ("RECIPE_RUNNER_OFFLINE", "HF_HUB_OFFLINE")


def is_url(value: str) -> bool:
    return "://" in value


def offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS)


def resolve_sources(recipe_images: dict[str, str], loaded: LoadedRecipe | None) -> dict[str, str]:
    """Each input as written -> an absolute path or an https URL. Raises RecipeError listing every
    missing file or unsupported URL (checked without opening anything: --dry-run does this)."""
    problems: list[Problem] = []
    resolved: dict[str, str] = {}
    for value, key in recipe_images.items():
        if is_url(value):
            scheme = urlparse(value).scheme
            if scheme != "https":
                problems.append(problem_at(loaded, key, f"only https URLs are fetched, got {scheme}:// in {value!r}"))
            elif offline():
                problems.append(problem_at(loaded, key, f"{value!r} is a URL, but the run is offline (HF_HUB_OFFLINE / RECIPE_RUNNER_OFFLINE)"))
            resolved[value] = value
            continue
        folder = loaded.origin(key).folder if loaded else Path.cwd()
        path = (folder / Path(value).expanduser()).resolve()
        if not path.is_file():
            problems.append(problem_at(loaded, key, f"no such image file: {path}"))
        resolved[value] = str(path)
    if problems:
        raise RecipeError(problems)
    return resolved



def inputs_of(recipe_matrix: Any) -> dict[str, str]:
    """Each distinct input of the matrix -> the dotted key that names it (first occurrence)."""
    found: dict[str, str] = {}
    for field in ("images", "mask_images"):
        for i, value in enumerate(getattr(recipe_matrix, field)):
            found.setdefault(value, f"matrix.{field}.{i}")
    return found


def read_bytes(source: str) -> bytes:
    """The bytes of a local file or an https URL (timeout, size cap)."""
    if not is_url(source):
        return Path(source).read_bytes()
    import urllib.request  # only when there is a URL to fetch: it costs ~40 ms to import

    request = urllib.request.Request(source, headers={"User-Agent": "recipe-runner"})
    with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:  # noqa: S310 - https only
        data = response.read(URL_MAX_BYTES + 1)
    if len(data) > URL_MAX_BYTES:
        raise ValueError(f"larger than {URL_MAX_BYTES >> 20} MiB")
    return data


def open_image(data: bytes, mode: str) -> Any:
    """Decode image bytes the way diffusers' load_image does (EXIF orientation applied, RGB)."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        image.load()
    return ImageOps.exif_transpose(image).convert(mode)


class InputImages:
    """Reads every input once before generation (so a broken one fails the recipe before the
    first image), then serves decoded images per batch from a small cache."""

    def __init__(self, resolved: dict[str, str], loaded: LoadedRecipe | None, keys: dict[str, str], cache: int = 16):
        self._resolved = resolved
        self._loaded = loaded
        self._keys = keys
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._size = cache
        self._fetched: dict[str, bytes] = {}
        self.digests: dict[str, str] = {}  # as written -> sha256 of its bytes (part of each job's key)
        self.sizes: dict[str, tuple[int, int]] = {}  # as written -> (width, height), after preflight

    def preflight(self) -> None:
        """Open every input once; a failure is a RecipeError naming the key."""
        from PIL import Image

        problems: list[Problem] = []
        for value, source in self._resolved.items():
            key = self._keys[value]
            try:
                data = read_bytes(source)
                self.digests[value] = hashlib.sha256(data).hexdigest()
                if is_url(source):
                    self._fetched[source] = data
                self.sizes[value] = open_image(data, "RGB").size
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                problems.append(problem_at(self._loaded, key, f"refused: {exc}"))
            except Exception as exc:
                problems.append(problem_at(self._loaded, key, f"cannot read image {value!r}: {type(exc).__name__}: {exc}"))
        if problems:
            raise RecipeError(problems)

    def size_problems(self, minimum: int) -> list[Problem]:
        """Inputs (after :meth:`preflight`) smaller than ``minimum`` pixels on a side: the
        pipeline's VAE scale factor. diffusers rounds an input's size down to a multiple of it, so
        a smaller input (1x1, 7x9) has no pixels left, and fails only after the model loaded."""
        problems: list[Problem] = []
        for value, (width, height) in self.sizes.items():
            if width < minimum or height < minimum:
                problems.append(problem_at(self._loaded, self._keys[value],
                                           f"{value!r} is {width}x{height} px: the pipeline needs at least {minimum} px "
                                           f"on each side (it works on multiples of {minimum}, rounding sizes down)"))
        return problems

    def get(self, value: str, mode: str = "RGB") -> Any:
        cache_key = (value, mode)
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return self._cache[cache_key]
        source = self._resolved[value]
        data = self._fetched.get(source) or read_bytes(source)
        image = open_image(data, mode)
        self._cache[cache_key] = image
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return image

    def with_sizes(self, jobs: list[Job]) -> list[Job]:
        """``jobs`` with their inputs' sizes: the plan never batches inputs of different sizes."""
        from dataclasses import replace

        return [replace(j, input_size=(self.sizes.get(j.image), self.sizes.get(j.mask_image or ""))) if j.image else j
                for j in jobs]

    def for_batch(self, jobs: tuple[Job, ...]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        images = [j.image for j in jobs if j.image is not None]
        masks = [j.mask_image for j in jobs if j.mask_image is not None]
        if images:
            out["image"] = [self.get(image) for image in images]
        if masks:
            out["mask_image"] = [self.get(mask, "L") for mask in masks]
        return out
