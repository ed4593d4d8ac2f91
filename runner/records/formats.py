"""Output formats: how an image is encoded with its metadata, and how that metadata is read back.

Where to add an output format: subclass :class:`OutputFormat` (one class) and register it, from a
plugin, through the ``register_output_formats`` hook; a recipe then names it in ``[output] format``.
The built-ins are ``png`` (metadata in iTXt chunks), ``webp`` and ``jpeg`` (metadata in EXIF).

Light module: Pillow is imported when an image is encoded or read.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar

from ..base.registry import Registry
from ..base.safe_read import open_image

JPEG_EXIF_MAX = 65_000  # a JPEG's EXIF is one APP1 segment: at most 65,533 bytes with its header
COMPRESSED = "zlib+base64"  # UserComment holding {COMPRESSED: ...}: the chunks' JSON, compressed to fit
EMBEDDED_MAX = 64 << 20  # decompressed metadata larger than this is not read (a zip bomb)


def compress(text: str) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")


def decompress(data: str) -> str:
    """The text :func:`compress` made; ValueError when it is not (or inflates beyond EMBEDDED_MAX)."""
    import base64
    import binascii
    import zlib

    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(data, validate=True), EMBEDDED_MAX)
        if inflater.unconsumed_tail:
            raise ValueError("embedded metadata too large")
        return raw.decode()
    except (binascii.Error, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from exc


def exif_problem(recipe_json: str) -> str | None:
    """Why a JPEG run cannot embed a recipe this large (its EXIF holds 64 KB, the runner compresses
    what does not fit; 8 KB are kept for the job, environment and parameters), or None."""
    size = len(compress(json.dumps({"recipe": recipe_json})))
    if size <= JPEG_EXIF_MAX - 8192:
        return None
    return (f"the recipe embedded in each JPEG is {size:,} bytes even compressed: more than a JPEG's EXIF holds "
            "(64 KB)")


class OutputFormat:
    """One image format of ``[output] format``."""

    name: ClassVar[str]  # as a recipe writes it: "png"
    extension: ClassVar[str]  # of the files: "png", "jpg"
    description: ClassVar[str] = ""

    def encode(self, image: Any, quality: int, text: dict[str, str] | None) -> bytes:
        """The file's bytes: ``image`` (a PIL image) with ``text`` (recipe, job, environment, the
        A1111 ``parameters`` line) embedded so that :meth:`read_text` gives it back."""
        raise NotImplementedError

    def read_text(self, image: Any) -> dict[str, str]:
        """The text embedded in an open PIL image of this format ({} when it carries none)."""
        return {k: v for k, v in (getattr(image, "text", {}) or {}).items() if isinstance(v, str)}


class Png(OutputFormat):
    name = "png"
    extension = "png"
    description = "lossless; metadata in iTXt chunks"

    def encode(self, image: Any, quality: int, text: dict[str, str] | None) -> bytes:
        from PIL.PngImagePlugin import PngInfo

        info = None
        if text:
            info = PngInfo()
            for key, value in text.items():
                info.add_itxt(key, value)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()


class ExifFormat(OutputFormat):
    """A format whose metadata goes into EXIF: the ``parameters`` line as ImageDescription, every
    text as ASCII-safe JSON in UserComment."""

    pil_format: ClassVar[str]
    exif_max: ClassVar[int | None] = None  # the EXIF the format holds (bytes); larger metadata is compressed

    def encode(self, image: Any, quality: int, text: dict[str, str] | None) -> bytes:
        from PIL import Image

        kwargs: dict[str, Any] = {"quality": quality}
        if text:
            exif = Image.Exif()
            exif[0x010E] = text.get("parameters", "")  # ImageDescription
            exif[0x9286] = json.dumps(text)  # UserComment: every chunk, ASCII-safe JSON
            kwargs["exif"] = exif.tobytes()
            if self.exif_max is not None and len(kwargs["exif"]) > self.exif_max:
                exif[0x010E] = text.get("parameters", "")[:1000]
                exif[0x9286] = json.dumps({COMPRESSED: compress(json.dumps(text))})
                kwargs["exif"] = exif.tobytes()
                if len(kwargs["exif"]) > self.exif_max:  # refused up front (exif_problem): never reached
                    raise ValueError(f"the metadata is {len(kwargs['exif'])} bytes even compressed: more than "
                                     f"{self.name}'s EXIF holds ({self.exif_max:,} bytes)")
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=self.pil_format, **kwargs)
        return buffer.getvalue()

    def read_text(self, image: Any) -> dict[str, str]:
        try:
            found = json.loads(image.getexif().get(0x9286) or "{}")
        except (TypeError, ValueError):
            found = {}
        if isinstance(found, dict) and isinstance(found.get(COMPRESSED), str):
            try:
                found = json.loads(decompress(found[COMPRESSED]))
            except ValueError:
                found = {}
        return {k: v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}


class Webp(ExifFormat):
    name = "webp"
    extension = "webp"
    pil_format = "WEBP"
    description = "lossy (quality); metadata in EXIF"


class Jpeg(ExifFormat):
    name = "jpeg"
    extension = "jpg"
    pil_format = "JPEG"
    exif_max = JPEG_EXIF_MAX
    description = "lossy (quality); metadata in EXIF"


class OutputFormats(Registry[OutputFormat]):
    BUILTIN: ClassVar[tuple[OutputFormat, ...]] = (Png(), Webp(), Jpeg())

    def __init__(self) -> None:
        super().__init__("output format")
        self.reset()

    def reset(self) -> None:
        self.clear()
        for fmt in self.BUILTIN:
            self.register(fmt.name, fmt, "recipe-runner")

    def extensions(self) -> tuple[str, ...]:
        """Every registered format's file extension, with a dot: what an image file of a run ends with."""
        return tuple(f".{f.extension}" for f in self.values())


FORMATS = OutputFormats()


def extension(name: str) -> str:
    """The file extension of the format ``name`` (``jpeg`` -> ``jpg``)."""
    return FORMATS.require(name).extension


def read_text(path: Path) -> dict[str, str]:
    """The text an image file carries, read by the format Pillow recognises; {} when none."""
    with open_image(path) as image:  # a regular file, bounded: any file may sit under an image's name
        text = dict(getattr(image, "text", {}) or {})
        if text:
            return {k: v for k, v in text.items() if isinstance(v, str)}
        for fmt in FORMATS.values():
            if isinstance(fmt, ExifFormat) and fmt.pil_format == image.format:
                return fmt.read_text(image)
            if not isinstance(fmt, (Png, ExifFormat)):
                found = fmt.read_text(image)
                if found:
                    return found
        return {}
