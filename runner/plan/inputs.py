"""Input images for image-to-image and inpainting: local paths (relative to the recipe file that
names them) and https URLs, checked before any model loads and opened before any image is made.

Only image formats are opened; Pillow's decompression-bomb limit is an error, not a warning;
URLs are fetched within an overall deadline and a size cap (https only, redirects too), and refused
when running offline. Local files are read only when they are regular files within a size bound.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from ..base.errors import Problem, RecipeError
from ..base.safe_read import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, FileTooLarge, ImageTooLarge, read_regular
from ..recipe.loading import LoadedRecipe, problem_at
from .matrix import Job

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
URL_DEADLINE = 30.0  # seconds for a whole URL fetch, redirects and every read together
URL_MAX_BYTES = 50 << 20
INPUT_MAX_BYTES = MAX_IMAGE_BYTES  # a local input image's file
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
    """The bytes of a local file (a regular file of at most INPUT_MAX_BYTES: a FIFO or device at
    its name is refused, never read) or an https URL (see :func:`fetch`)."""
    if not is_url(source):
        return read_regular(source, INPUT_MAX_BYTES, what="input image")
    return fetch(source)


def _open_url(request: Any, timeout: float) -> Any:
    """urlopen, following redirects from https to https only (urllib imported here: it costs
    ~40 ms, paid only when there is a URL to fetch)."""
    import urllib.error
    import urllib.request

    class NoDowngrade(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                             newurl: str) -> urllib.request.Request | None:
            new_scheme = urlparse(urljoin(req.full_url, newurl)).scheme
            if new_scheme != "https":
                raise urllib.error.URLError(f"refused a redirect from https to {new_scheme}:// ({newurl})")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(NoDowngrade).open(request, timeout=timeout)


def fetch(url: str, deadline: float | None = None) -> bytes:
    """The bytes behind an https URL, within URL_DEADLINE seconds in all (connecting, redirects and
    every read together, not per read: a server that sends a byte a second is cut off too), at
    most URL_MAX_BYTES. A redirect to anything but https is refused. TimeoutError, URLError or
    ValueError otherwise."""
    deadline = URL_DEADLINE if deadline is None else deadline
    if urlparse(url).scheme != "https":
        raise ValueError(f"only https URLs are fetched: {url!r}")
    result: dict[str, Any] = {}
    stop = threading.Event()

    def work() -> None:
        try:
            import urllib.request

            request = urllib.request.Request(url, headers={"User-Agent": "recipe-runner"})
            chunks: list[bytes] = []
            total = 0
            with _open_url(request, max(0.1, deadline)) as response:
                while not stop.is_set():
                    chunk = response.read1(1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                    if total > URL_MAX_BYTES:
                        raise ValueError(f"larger than {URL_MAX_BYTES >> 20} MiB")
            result["data"] = b"".join(chunks)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=work, name="recipe-runner-fetch", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        stop.set()  # the worker ends at its next read (each read is bounded by the socket timeout)
        raise TimeoutError(f"not fetched within {deadline:g} s")
    if "error" in result:
        raise result["error"]
    return result["data"]


def open_image(data: bytes, mode: str) -> Any:
    """Decode image bytes the way diffusers' load_image does (EXIF orientation applied, RGB)."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageTooLarge(f"{width} x {height} pixels, more than the input image limit of {MAX_IMAGE_PIXELS:,}")
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
            except (Image.DecompressionBombWarning, Image.DecompressionBombError, ImageTooLarge, FileTooLarge) as exc:
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
