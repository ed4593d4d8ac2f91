"""Hostile reads (issue #19, items 6-10 and 17): nothing a recipe, an output folder, a model folder
or a URL holds can make a run hang, read without end, or fail with a traceback.

FIFOs (``os.mkfifo``) at the names of recipes, journals, partial manifests and images; links to
``/dev/zero`` and ``/proc`` files; sparse oversized files (``truncate``); a local https server
that sends a byte at a time or redirects to http; matrices of 10^10 jobs; recipes nested 5000 deep.
Every test is bounded in time: subprocesses with ``timeout=``, in-process calls through
:func:`within`; where a run writes, the tree around its output root is hashed before and after
(:func:`tests.conftest.tree_digest`) to show that nothing outside it changed.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import image_files, pixels, run_subprocess, tree_digest

T2I = '''
name = "{name}"
[model]
id = "{model}"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a cat"]
seeds = [1, 2]
'''

I2I = '''
name = "i2i"
[model]
id = "tiny:sd15"
device = "cpu"
task = "image-to-image"
[params]
num_inference_steps = 2
strength = 0.5
[matrix]
prompts = ["a cat"]
seeds = 1
images = ["{image}"]
'''


def within(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a daemon thread; fails the test when it has not returned after ``seconds``
    (a hang is a failure, never a stuck suite). Returns its value or raises its exception."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def digest_around(root: Path, skip: Path) -> dict[str, str]:
    """:func:`tree_digest` of ``root`` without ``skip``, except that files of more than 64 MiB (the
    sparse ones these tests make) are told by size, modification time and a hash of their first
    and last MiB instead of read whole."""
    import hashlib
    import stat

    found = tree_digest(root, skip=skip) if not _big_files(root, skip) else {}
    if found:
        return found
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        info = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISREG(info.st_mode):
            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(0, info.st_size - (1 << 20)))
                tail = fh.read()
            found[rel] = f"{info.st_size}:{info.st_mtime_ns}:" + hashlib.sha256(head + tail).hexdigest()
        elif stat.S_ISLNK(info.st_mode):
            found[rel] = "link:" + os.readlink(path)
        else:
            found[rel] = f"type:{stat.S_IFMT(info.st_mode):o}"
    return found


def _big_files(root: Path, skip: Path) -> bool:
    return any(p.is_file() and not p.is_symlink() and p.stat().st_size > 64 << 20 and skip not in p.parents
               for p in root.rglob("*"))


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that takes no disk space (``truncate``), starting with ``head``."""
    path.write_bytes(head)
    os.truncate(path, size)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds almost no pixel data (an IDAT of
    one empty row): its header is all there is to read."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


# --- item 6: FIFOs and devices where files are read -----------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_recipe_that_is_a_fifo_or_dev_zero_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "r.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    started = time.monotonic()
    result = run_subprocess(path, "--dry-run", cwd=tmp_path, timeout=60)
    assert result.code == 2, result.err
    assert "r.toml: not a file: " + ("a FIFO" if kind == "fifo" else "a device") in result.err
    assert "Traceback" not in result.err and time.monotonic() - started < 30


def test_the_watcher_never_opens_a_fifo_put_at_a_recipes_name(tmp_path):
    from recipe_runner.running import watch

    fifo = tmp_path / "r.toml"
    os.mkfifo(fifo)
    assert within(5, watch.digest, fifo) is None
    assert within(5, watch.digest, Path("/dev/zero")) is None
    regular = tmp_path / "s.toml"
    regular.write_text("x = 1\n")
    assert within(5, watch.digest, regular) is not None


def test_journals_and_partial_manifests_that_are_fifos_or_devices_are_no_records(tmp_path):
    from recipe_runner.records.journal import read_journal
    from recipe_runner.records.resume import read_previous

    os.mkfifo(tmp_path / ".manifest.journal.jsonl")
    os.mkfifo(tmp_path / ".manifest.rank-0.json")
    os.mkfifo(tmp_path / ".manifest.journal.rank-0.jsonl")
    (tmp_path / ".manifest.journal.rank-1.jsonl").symlink_to("/dev/zero")
    (tmp_path / ".manifest.rank-1.json").symlink_to("/dev/zero")
    assert within(5, read_journal, tmp_path / ".manifest.journal.jsonl") == []
    previous = within(5, read_previous, tmp_path)
    assert previous.manifest is None and previous.records == {}


def test_safe_read_refuses_fifos_devices_and_proc_files_and_bounds_sizes(tmp_path):
    from recipe_runner.base.safe_read import FileTooLarge, NotRegularFile, read_regular, sha256_regular

    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "fifo", "FIFO"), (Path("/dev/zero"), "device"),
                       (Path("/proc/self/pagemap"), "reads past its size")):
        with pytest.raises(NotRegularFile, match=kind):
            within(5, read_regular, path)
    big = sparse(tmp_path / "big", 3 << 30)
    with pytest.raises(FileTooLarge, match="3,221,225,472 bytes"):
        within(5, read_regular, big, 1 << 20)
    (tmp_path / "small").write_bytes(b"abc")
    assert read_regular(tmp_path / "small", 3) == b"abc"
    assert sha256_regular(tmp_path / "small") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.fixture
def made(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    """A finished two-image run: (recipe, output root, run folder, pixels by file name)."""
    recipe = recipe_runner_write_recipe(T2I.format(name="fifo", model="tiny:sd15"))
    out = tmp_path / "out"
    result = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert result.code == 0, result.err
    folder = out / "fifo"
    return recipe, out, folder, {p.name: pixels(p) for p in image_files(folder)}


@pytest.mark.slow
def test_fifos_at_an_images_journals_and_partial_manifests_names_do_not_hang_a_run(made, tmp_path):
    recipe, out, folder, before = made
    victim = sorted(before)[0]
    (folder / victim).unlink()
    os.mkfifo(folder / victim)
    for name in (".manifest.journal.jsonl", ".manifest.rank-0.json", ".manifest.journal.rank-0.jsonl"):
        os.mkfifo(folder / name)
    around = tree_digest(tmp_path, skip=out)

    dry = run_subprocess(recipe, "--out", out, "--dry-run", cwd=tmp_path, timeout=60)
    assert dry.code == 0, dry.err
    assert "1 new" in dry.out and "1 unchanged" in dry.out, dry.out
    started = time.monotonic()
    result = run_subprocess(recipe, "--out", out, "--no-progress", cwd=tmp_path, timeout=180)
    assert result.code == 0, result.err
    assert time.monotonic() - started < 150

    assert (folder / victim).is_file() and not (folder / victim).is_symlink()
    assert {p.name for p in image_files(folder)} == set(before)
    for name, expected in before.items():
        assert np.array_equal(pixels(folder / name), expected), name
    assert not [p.name for p in folder.iterdir() if not p.is_dir() and not p.is_file()]  # no FIFO left
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [r["status"] for r in manifest["images"]] == ["done", "done"]
    assert tree_digest(tmp_path, skip=out) == around


# --- item 7: model folders -------------------------------------------------------------------------


@pytest.fixture
def planted_model(recipe_runner_tiny_sd15, tmp_path):
    """The tiny model copied, with a text file linked to /proc/self/pagemap and one to /proc/kmsg
    (a regular file of size 0 to stat; reading it blocks, waiting for kernel messages)."""
    model = tmp_path / "model"
    shutil.copytree(recipe_runner_tiny_sd15, model)
    (model / "unet" / "notes.txt").symlink_to("/proc/self/pagemap")
    (model / "vae" / "notes.txt").symlink_to("/proc/kmsg")
    return model


@pytest.mark.slow
def test_lock_of_a_model_folder_with_links_to_proc_files_ends_with_exit_2(planted_model, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(T2I.format(name="proc", model="./model"))
    around = tree_digest(tmp_path, skip=tmp_path / "cache")
    started = time.monotonic()
    result = run_subprocess(recipe, "--lock", cwd=tmp_path, timeout=60,
                            env={"RECIPE_RUNNER_CACHE": str(tmp_path / "cache")})
    assert result.code == 2, result.err
    assert "model.id" in result.err and "notes.txt" in result.err and "special file" in result.err, result.err
    assert "Traceback" not in result.err and time.monotonic() - started < 30
    assert tree_digest(tmp_path, skip=tmp_path / "cache") == around  # no lock file written


@pytest.mark.slow
def test_a_run_with_such_a_model_folder_ends_with_exit_2(planted_model, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(T2I.format(name="proc", model="./model"))
    out = tmp_path / "out"
    around = tree_digest(tmp_path, skip=out)
    result = run_subprocess(recipe, "--out", out, "--no-progress", cwd=tmp_path, timeout=120)
    assert result.code == 2, result.err
    assert "model.id" in result.err and "notes.txt" in result.err and "Traceback" not in result.err
    assert tree_digest(tmp_path, skip=out) == around


@pytest.mark.slow
@pytest.mark.parametrize("config", ["model_index.json", "unet/config.json"])
def test_a_model_file_that_is_a_fifo_is_refused_before_anything_loads(recipe_runner_tiny_sd15, tmp_path, config):
    model = tmp_path / "model"
    shutil.copytree(recipe_runner_tiny_sd15, model)
    (model / config).unlink()
    os.mkfifo(model / config)
    recipe = tmp_path / "r.toml"
    recipe.write_text(T2I.format(name="fifo-config", model="./model"))
    started = time.monotonic()
    result = run_subprocess(recipe, "--dry-run", cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 30
    assert result.code == 2, result.err
    assert "model.id" in result.err and f"holds {config}: not regular files" in result.err, result.err
    assert "Traceback" not in result.err


@pytest.mark.slow
def test_lock_of_model_id_root_ends_at_once_with_exit_2(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(T2I.format(name="root", model="/"))
    started = time.monotonic()
    result = run_subprocess(recipe, "--lock", cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert result.code == 2, result.err
    assert "model.id" in result.err and "not a model folder" in result.err and "Traceback" not in result.err
    assert elapsed < 20, elapsed
    assert not (tmp_path / "r.lock").exists()


def test_model_folders_are_listed_within_bounds_before_any_file_is_read(tmp_path, monkeypatch):
    from recipe_runner.base import filehashes

    with pytest.raises(filehashes.FolderTooLarge, match="not a model folder"):
        within(20, filehashes.list_folder, Path("/"))
    for i in range(5):
        (tmp_path / f"w{i}.safetensors").write_bytes(b"x" * 10)
    monkeypatch.setattr(filehashes, "MAX_FOLDER_FILES", 4)
    with pytest.raises(filehashes.FolderTooLarge, match="more than 4 files"):
        filehashes.list_folder(tmp_path)
    monkeypatch.setattr(filehashes, "MAX_FOLDER_FILES", 10)
    monkeypatch.setattr(filehashes, "MAX_FOLDER_BYTES", 45)
    with pytest.raises(filehashes.FolderTooLarge, match="more than 45 bytes"):
        filehashes.list_folder(tmp_path)


# --- item 8: URL inputs ----------------------------------------------------------------------------

TINY_PNG = png_header(1, 1)  # bytes to serve; their content does not matter to the fetch


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Servers:
    """An https server and a plain http one on 127.0.0.1, in threads: ``/slow`` sends 1,000 bytes
    one every 50 ms, ``/to-http`` redirects to the http server, ``/to-https`` to ``/ok``."""

    def __init__(self, cert: Path, key: Path):
        self.http_hits: list[str] = []
        servers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.server is servers.http:
                    servers.http_hits.append(self.path)
                if self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    try:
                        for _ in range(1000):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.05)
                    except OSError:
                        return
                elif self.path == "/to-http":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{servers.http.server_address[1]}/ok")
                    self.end_headers()
                elif self.path == "/to-https":
                    self.send_response(302)
                    self.send_header("Location", "/ok")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(TINY_PNG)))
                    self.end_headers()
                    self.wfile.write(TINY_PNG)

        self.https = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.https.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.https.socket = context.wrap_socket(self.https.socket, server_side=True)
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.https, self.http)]
        for thread in self.threads:
            thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.https.server_address[1]}{path}"

    def close(self) -> None:
        for server in (self.https, self.http):
            server.shutdown()
            server.server_close()


@pytest.fixture
def servers(certificate, monkeypatch):
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test's certificate
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    running = Servers(cert, key)
    yield running
    running.close()


@pytest.mark.slow
def test_a_url_fetch_has_an_overall_deadline_not_a_per_read_timeout(servers, monkeypatch):
    from recipe_runner.plan import inputs

    assert inputs.read_bytes(servers.url("/ok")) == TINY_PNG  # the server and certificate work
    monkeypatch.setattr(inputs, "URL_DEADLINE", 1.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not fetched within 1 s"):
        within(10, inputs.read_bytes, servers.url("/slow"))  # 1 byte every 50 ms: 50 s to the end
    assert time.monotonic() - started < 3


@pytest.mark.slow
def test_an_https_url_redirected_to_http_is_refused(servers):
    import urllib.error

    from recipe_runner.plan import inputs

    with pytest.raises(urllib.error.URLError, match="refused a redirect from https to http://"):
        within(10, inputs.read_bytes, servers.url("/to-http"))
    assert servers.http_hits == []  # nothing was asked of the http server
    assert within(10, inputs.read_bytes, servers.url("/to-https")) == TINY_PNG


# --- item 9: a matrix too large is counted, not built ----------------------------------------------


def test_a_matrix_of_ten_billion_jobs_is_refused_by_max_jobs_at_once(tmp_path):
    names = ["a", "b", "c", "d", "e"]
    values = ", ".join(f'"v{i}"' for i in range(100))
    recipe = tmp_path / "huge.toml"
    recipe.write_text(
        '[model]\nid = "tiny:sd15"\n[matrix]\nprompts = ["' + " ".join(f"{{{n}}}" for n in names) + '"]\nseeds = 1\n'
        + "[matrix.vars]\n" + "".join(f"{n} = [{values}]\n" for n in names))
    started = time.monotonic()
    result = run_subprocess(recipe, "--dry-run", cwd=tmp_path, timeout=60)
    assert result.code == 2, result.err
    assert "10,000,000,000 jobs is more than run.max_jobs" in result.err
    assert time.monotonic() - started < 20


def test_count_multiplies_and_agrees_with_expand(tmp_path):
    from recipe_runner.plan import matrix
    from recipe_runner.recipe import loading
    from recipe_runner.recipe.model import Recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nid = "tiny:sd15"\n[params]\nnegative_prompt = "{c}"\n[matrix]\n'
                      'prompts = ["{a} {b}", "{a}"]\nseeds = [1, 2]\n[matrix.vars]\na = ["1", "2", "3"]\n'
                      'b = ["x", "y"]\nc = ["p", "q"]\n[matrix.axes]\nguidance_scale = [1.0, 2.0]\n')
    parsed = Recipe.model_validate(loading.load(recipe).data)
    assert matrix.count(parsed) == len(matrix.expand(parsed)) == 2 * (3 * 2 * 2 + 3 * 2) * 2
    big = parsed.model_copy(update={"matrix": parsed.matrix.model_copy(update={"vars": {
        "a": [str(i) for i in range(10_000)], "b": [str(i) for i in range(10_000)], "c": [str(i) for i in range(10_000)]}})})
    assert within(2, matrix.count, big) == 2 * (10_000 ** 3 + 10_000 ** 2) * 2


# --- item 10: oversized inputs and images ------------------------------------------------------------


@pytest.mark.slow
def test_a_3_gb_input_image_is_refused_before_it_is_read(tmp_path):
    from recipe_runner.base.safe_read import FileTooLarge
    from recipe_runner.plan import inputs

    big = sparse(tmp_path / "big.png", 3 << 30, png_header(64, 64))
    with pytest.raises(FileTooLarge, match="more than the"):
        within(5, inputs.read_bytes, str(big))
    recipe = tmp_path / "r.toml"
    recipe.write_text(I2I.format(image="big.png"))
    out = tmp_path / "out"
    around = digest_around(tmp_path, out)
    started = time.monotonic()
    result = run_subprocess(recipe, "--out", out, cwd=tmp_path, timeout=120)
    assert result.code == 2, result.err
    assert "matrix.images.0" in result.err and "3,221,225,472 bytes" in result.err and "Traceback" not in result.err
    assert time.monotonic() - started < 60
    assert digest_around(tmp_path, out) == around


def test_an_input_declaring_too_many_pixels_is_refused_from_its_header(monkeypatch):
    from PIL import Image

    from recipe_runner.base.safe_read import ImageTooLarge
    from recipe_runner.plan import inputs

    # Pillow's own bomb check off (a plugin may set it so): the header bound still holds, and
    # nothing is decoded (this PNG has a header and no pixel data at all).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageTooLarge, match="20000 x 20000 pixels"):
        within(5, inputs.open_image, png_header(20_000, 20_000), "RGB")


def compare_side(folder: Path, seed_file: str = "a.png", sha: str = "x") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({
        "recipe": {"name": folder.name}, "environment": {},
        "images": [{"file": seed_file, "index": 0, "prompt": "p", "seed": 1, "status": "done", "sha256": sha}]}))
    return folder


def test_compare_bounds_what_it_reads(tmp_path):
    from PIL import Image

    a = compare_side(tmp_path / "A")
    b = compare_side(tmp_path / "B", sha="y")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(a / "a.png")
    sparse(b / "a.png", 3 << 30, png_header(8, 8))
    (tmp_path / "C").mkdir()
    huge_manifest = sparse(tmp_path / "C" / "manifest.json", 3 << 30, b"{")
    report = tmp_path / "report"
    outside = digest_around(tmp_path, report)

    started = time.monotonic()
    result = run_subprocess("--compare", a, b, "--out", report, cwd=tmp_path, timeout=60)
    assert result.code == 1, result.err  # a difference: B's image is not read, so it cannot be the same
    assert "Traceback" not in result.err and time.monotonic() - started < 30
    assert "more than the" in (report / "compare.json").read_text()

    result = run_subprocess("--compare", a, huge_manifest, "--out", report, cwd=tmp_path, timeout=60)
    assert result.code == 2 and "error:" in result.err and "3,221,225,472 bytes" in result.err, result.err
    assert "Traceback" not in result.err and time.monotonic() - started < 40
    assert digest_around(tmp_path, report) == outside


# --- item 17: recursion, BOM, bidi, --set extends, malformed manifests --------------------------------


def dry_run(recipe: Path, *args: Any) -> Any:
    started = time.monotonic()
    result = run_subprocess(recipe, "--dry-run", *args, cwd=recipe.parent, timeout=60)
    assert time.monotonic() - started < 30
    assert "Traceback" not in result.err and "RecursionError" not in result.err, result.err
    return result


BASE = '[model]\nid = "tiny:sd15"\n[matrix]\nprompts = ["a cat"]\nseeds = 1\n'


@pytest.mark.parametrize("nested", [
    "v = " + "[" * 5000 + "]" * 5000,
    "v = " + "{a = " * 5000 + "1" + "}" * 5000,
    ".".join(["a"] * 3000) + " = 1",
    "[" + ".".join(["t"] * 3000) + "]\nx = 1",
    "v = " + "[" * 40 + "]" * 40,
])
@pytest.mark.slow
def test_deep_nesting_is_exit_2_with_a_message(tmp_path, nested):
    recipe = tmp_path / "deep.toml"
    recipe.write_text(nested + "\n" + BASE)
    result = dry_run(recipe)
    assert result.code == 2, result.err
    assert "deep.toml" in result.err and "nest" in result.err and "32 levels" in result.err, result.err


def test_a_dotted_key_of_moderate_depth_still_loads(tmp_path):
    recipe = tmp_path / "ok.toml"
    recipe.write_text(BASE + "[params]\ncross_attention_kwargs = { scale = 0.5 }\n")
    assert dry_run(recipe).code == 0


@pytest.mark.slow
def test_a_1500_file_extends_chain_is_exit_2_with_a_message(tmp_path):
    (tmp_path / "r0.toml").write_text(BASE)
    for i in range(1, 1500):
        (tmp_path / f"r{i}.toml").write_text(f'extends = "r{i - 1}.toml"\n')
    result = dry_run(tmp_path / "r1499.toml")
    assert result.code == 2, result.err
    assert "extends chain is longer than 32 files" in result.err and "extends" in result.err
    (tmp_path / "short.toml").write_text('extends = "r20.toml"\n')
    assert dry_run(tmp_path / "short.toml").code == 0  # 22 files: fine


@pytest.mark.slow
def test_set_extends_is_refused_not_ignored(tmp_path):
    (tmp_path / "base.toml").write_text(BASE + "[params]\nguidance_scale = 3.0\n")
    (tmp_path / "r.toml").write_text(BASE)
    result = dry_run(tmp_path / "r.toml", "--set", "extends=base.toml")
    assert result.code == 2, result.err
    assert "--set" in result.err and "cannot change extends" in result.err
    assert dry_run(tmp_path / "r.toml", "--set", "params.guidance_scale=3.0").code == 0


@pytest.mark.slow
def test_a_bom_at_the_start_of_a_recipe_is_reported(tmp_path):
    recipe = tmp_path / "bom.toml"
    recipe.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    result = dry_run(recipe)
    assert result.code == 2, result.err
    assert "bom.toml:1:" in result.err and "byte order mark" in result.err
    recipe.write_bytes(BASE.encode())
    assert dry_run(recipe).code == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["x\u202egnp.exe", "a\u2066b", "tab\x7f", "line\u2028sep", "c1\x85"])
def test_control_and_bidi_characters_are_refused_in_recipe_names(tmp_path, name):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"name = {json.dumps(name)}\n" + BASE, encoding="utf-8")
    out = tmp_path / "out"
    result = dry_run(recipe, "--out", out)
    assert result.code == 2, result.err
    assert "name" in result.err and "U+" in result.err and "control or bidirectional" in result.err
    assert not out.exists()


def test_emoji_and_accents_stay_fine_in_recipe_names(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "caf\u00e9 \U0001F468\u200D\U0001F469\u200D\U0001F467 \u0627\u0644\u0642\u0637"\n' + BASE,
                      encoding="utf-8")
    assert dry_run(recipe).code == 0


MALFORMED = {
    "prompt": ("images", 0, "prompt", [1]),
    "seed": ("images", 0, "seed", {"a": 1}),
    "vars": ("images", 0, "vars", [1]),
    "params": ("images", 0, "params", "x"),
    "index": ("images", 0, "index", "a"),
    "status": ("images", 0, "status", 5),
    "matrix": ("recipe", "matrix", [1]),
    "axes": ("recipe", "matrix", {"axes": [1]}),
    "scheduler": ("recipe", "scheduler", {"name": "x", "options": [1]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_compare_on_a_malformed_manifest_exits_2_with_a_message(tmp_path, case):
    a = compare_side(tmp_path / "A")
    b = compare_side(tmp_path / "B")
    data = json.loads((b / "manifest.json").read_text())
    *path, value = MALFORMED[case]
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    (b / "manifest.json").write_text(json.dumps(data))
    result = run_subprocess("--compare", a, b, "--out", tmp_path / "report", cwd=tmp_path, timeout=60)
    assert result.code == 2, (result.code, result.err)
    assert "error:" in result.err and "malformed manifest" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "report").exists()


def test_a_file_appended_to_while_it_is_read_is_read_as_it_was_when_opened(tmp_path):
    from recipe_runner.base.safe_read import open_regular, read_regular

    journal = tmp_path / ".manifest.journal.jsonl"
    journal.write_bytes(b'{"file": "a.png"}\n')
    with open_regular(journal) as fh:
        with open(journal, "ab") as writer:  # another process appends a line meanwhile
            writer.write(b'{"file": "b.png"}\n')
        assert fh.read() == b'{"file": "a.png"}\n'
    (tmp_path / "empty").write_bytes(b"")
    assert read_regular(tmp_path / "empty") == b""
