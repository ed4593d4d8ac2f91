"""A hostile or damaged output folder (planted manifests, journals, symbolic links, a second run,
a kill mid-write) can never make a run write, move or read anything outside its output root, and
never blocks the folder: issue #19, items 1-5, 12 and 13.

Every test ends in bounded time with the documented exit status, and hashes the tree around the
test's output root before and after (``tree_digest``): nothing outside it changes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from recipe_runner.records.names import plain_file_name, record_file
from recipe_runner.records.runlock import LOCK_NAME
from tests.conftest import REPO, image_files, pixels, tree_digest

LIMIT = 30.0  # seconds: a tiny model on a shared CPU; each run here takes one or two
NAME = "records"
RECIPE = '''
name = "records"
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
guidance_scale = {guidance}
[matrix]
prompts = ["a red fox", "a blue house"]
seeds = [0]
[run]
batch_size = 1
'''


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, recipe_runner_cache) -> Path:
    """A finished run folder of RECIPE (two images, grid, gallery), made once for this module."""
    from recipe_runner.cli.main import main

    where = tmp_path_factory.mktemp("pristine")
    recipe = where / "records.toml"
    recipe.write_text(textwrap.dedent(RECIPE.format(guidance=7.5)))
    assert main([str(recipe), "--out", str(where / "out"), "--no-progress"]) == 0
    return where / "out" / NAME


class Case:
    """A test's layout: ``root`` (hashed around ``out``), the recipe in it, the output root ``out``
    three folders down (so that ``../`` chains in a record stay inside ``root``)."""

    def __init__(self, root: Path, pristine: Path, guidance: float = 7.5, copy: bool = True):
        self.root = root
        self.out = root / "a" / "b" / "out"
        self.folder = self.out / NAME
        self.recipe = root / "records.toml"
        self.recipe.write_text(textwrap.dedent(RECIPE.format(guidance=guidance)))
        (root / "victim.txt").write_text("precious\n")
        if copy:
            shutil.copytree(pristine, self.folder, symlinks=True)
        self.before: dict[str, str] = {}
        self.started = 0.0

    def manifest(self) -> dict:
        return json.loads((self.folder / "manifest.json").read_text())

    def write_manifest(self, data: dict) -> None:
        (self.folder / "manifest.json").write_text(json.dumps(data, indent=2))

    def snap(self) -> None:
        self.before = tree_digest(self.root, skip=self.out)
        self.started = time.monotonic()

    def check(self) -> None:
        """Bounded in time, and nothing outside the output root changed."""
        assert time.monotonic() - self.started < LIMIT
        assert tree_digest(self.root, skip=self.out) == self.before


def run(cli, case: Case, *args):
    return cli(case.recipe, "--out", case.out, "--no-progress", *args)


def images(folder: Path) -> dict[str, tuple[str, int]]:
    """Each image's bytes (hashed) and mtime: what "kept as it is" means."""
    import hashlib

    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in image_files(folder)}


# --- 1. records are never trusted as paths -------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "a/b.png", "..", ".", "", ".hidden.png", "x.txt",
                                  "manifest.json", "x\x00.png", "x\n.png", "C:\\x.png", 3, None])
def test_a_record_file_must_be_a_plain_image_name(name, tmp_path):
    warnings: list[str] = []
    assert record_file(tmp_path, name, warn=warnings.append) is None
    assert len(warnings) == 1 and "ignored" in warnings[0]


def test_a_plain_image_name_is_taken():
    assert plain_file_name("a-red-fox-s0-1234abcd.png") and plain_file_name("x.webp") and plain_file_name("x.jpg")
    assert record_file(Path("/run"), "x.png", warn=None) == Path("/run/x.png")


def test_manifest_records_outside_the_folder_are_ignored(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine, guidance=8.0)  # every job changes: the folder's files are retired
    data = case.manifest()
    data["images"] += [
        {**data["images"][0], "file": "../../../../victim.txt", "status": "done"},  # moved out of root/
        {**data["images"][0], "file": "../../../../a/b/moved.png", "status": "stale"},
        {**data["images"][0], "file": str(tmp_path / "victim.txt"), "status": "done"},
    ]
    case.write_manifest(data)
    (tmp_path / "a" / "b" / "moved.png").write_bytes(b"not an image")
    case.snap()
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    assert "not a plain image file name" in result.err and "victim.txt" in result.err
    case.check()
    history = next((case.folder / "history").iterdir())
    assert sorted(p.name for p in history.iterdir()) == sorted(["manifest.json", *(r["file"] for r in data["images"][:2])])
    assert all(plain_file_name(r["file"]) for r in case.manifest()["images"])


def test_journal_lines_outside_the_folder_are_ignored(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine)
    lines = [{"file": "../../../../victim.txt", "status": "stale"}, {"file": "/etc/hostname", "status": "done"},
             {"file": "../" + NAME + "/../../../../victim.txt", "status": "stale"}]
    (case.folder / ".manifest.journal.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    kept = images(case.folder)
    case.snap()
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    assert "ignored" in result.err
    case.check()
    assert images(case.folder) == kept and not (case.folder / "history").exists()
    assert not (case.folder / "victim.txt").exists()


# --- 2. --compare reads only regular files of each side's folder, copies with a bound, never links --------

def test_compare_copies_only_regular_files_inside_each_side(recipe_runner_cli, tmp_path, pristine, monkeypatch):
    monkeypatch.setenv("H19_SECRET_TOKEN", "tok-5ec7e7-do-not-upload")
    case = Case(tmp_path, pristine)
    side_b = tmp_path / "a" / "b" / "out" / "b"
    shutil.copytree(pristine, side_b)
    secret = tmp_path / "secret.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)  # a real image, outside both sides
    (case.folder / "link.png").symlink_to(secret)
    data = case.manifest()
    extra = data["images"][0]
    data["images"] = [
        {**extra, "file": "/proc/self/environ"},
        {**extra, "file": "link.png", "seed": 1},
        {**extra, "file": "/etc/passwd", "seed": 2},
        {**extra, "file": "../../../../secret.png", "seed": 3},
        {**extra, "file": "/proc/self/status", "seed": 4},  # (never /proc/self/pagemap here: without
    ]                                                      # the fix, a copy of it fills the disk)
    case.write_manifest(data)
    report = tmp_path / "a" / "b" / "out" / "report"
    case.snap()
    result = recipe_runner_cli("--compare", case.folder, side_b, "--out", report)
    assert result.code == 1, result.err  # the A records have no image: they differ
    case.check()
    written = [p for p in report.rglob("*")]
    assert written and all(not p.is_symlink() for p in written)
    secret_bytes = secret.read_bytes()
    for path in written:
        if path.is_file():
            assert path.stat().st_nlink == 1  # a copy, never a hard link
            body = path.read_bytes()
            assert b"tok-5ec7e7" not in body and b"root:" not in body and body != secret_bytes
    assert "not a plain image file name" in result.err


def test_compare_copies_an_image_as_a_copy(recipe_runner_cli, tmp_path, pristine, monkeypatch):
    side_a, side_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(pristine, side_a)
    shutil.copytree(pristine, side_b)
    target = image_files(side_b)[0]
    from PIL import Image

    with Image.open(target) as image:
        Image.new("RGB", image.size, (255, 0, 0)).save(target)
    report = tmp_path / "report"
    before = tree_digest(tmp_path, skip=report)
    started = time.monotonic()
    result = recipe_runner_cli("--compare", side_a, side_b, "--out", report)
    assert result.code == 1, result.err
    assert time.monotonic() - started < LIMIT and tree_digest(tmp_path, skip=report) == before
    shown = sorted((report / "pairs").iterdir())
    assert len(shown) == 3  # a, b, diff
    assert all(p.stat().st_nlink == 1 and not p.is_symlink() for p in shown)

    from recipe_runner.views import compare

    monkeypatch.setattr(compare, "MAX_COPY_BYTES", 1000)  # a bound below the images' size
    result = recipe_runner_cli("--compare", side_a, side_b, "--out", report)
    assert result.code == 1, result.err
    copies = [p for p in (report / "pairs").iterdir() if not p.name.endswith("-diff.png")]
    assert copies and all(p.stat().st_size <= 1000 for p in copies)  # B's solid red image is small
    assert not (report / "pairs" / shown[0].name).exists()  # A's image is larger than the bound: left out


# --- 3. symbolic links on the way out ------------------------------------------------------------------

def test_an_output_root_that_is_a_link_is_refused(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine, copy=False)
    victim = tmp_path / "victim"
    victim.mkdir()
    case.out.parent.mkdir(parents=True)
    case.out.symlink_to(victim)
    before = tree_digest(tmp_path)
    started = time.monotonic()
    result = run(recipe_runner_cli, case)
    assert result.code == 2
    assert "symbolic link" in result.err and str(case.out) in result.err
    assert time.monotonic() - started < LIMIT
    assert tree_digest(tmp_path) == before and not any(victim.iterdir())


def test_a_run_folder_that_is_a_link_is_refused(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine, copy=False)
    victim = tmp_path / "victim"
    shutil.copytree(pristine, victim)
    case.out.mkdir(parents=True)
    case.folder.symlink_to(victim)
    before = tree_digest(tmp_path)
    started = time.monotonic()
    result = run(recipe_runner_cli, case, "--force")
    assert result.code == 2 and "symbolic link" in result.err
    assert time.monotonic() - started < LIMIT
    assert tree_digest(tmp_path) == before


def test_a_history_folder_that_is_a_link_is_refused(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine, guidance=8.0)  # every image would be replaced, into history/
    victim = tmp_path / "victimH"
    victim.mkdir()
    (case.folder / "history").symlink_to(victim)
    before = tree_digest(tmp_path)
    started = time.monotonic()
    result = run(recipe_runner_cli, case)
    assert result.code == 2
    assert "history" in result.err and "symbolic link" in result.err
    assert time.monotonic() - started < LIMIT
    assert tree_digest(tmp_path) == before and not any(victim.iterdir())  # the run folder too: refused up front


# --- 4. --reproduce never writes into the image's folder and compares the file given ----------------------

def test_reproduce_into_the_run_s_own_root_is_refused(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine)
    image = image_files(case.folder)[0]
    before = tree_digest(tmp_path)
    started = time.monotonic()
    result = recipe_runner_cli("--reproduce", image, "--out", case.out)
    assert result.code == 2
    assert "the folder the image is in" in result.err
    assert time.monotonic() - started < LIMIT
    assert tree_digest(tmp_path) == before  # the run folder included: nothing written, nothing rewritten


def test_reproduce_into_another_run_s_folder_is_refused(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine)
    elsewhere = tmp_path / "elsewhere.png"
    shutil.copyfile(image_files(case.folder)[0], elsewhere)  # e.g. an image from history/
    before = tree_digest(tmp_path)
    started = time.monotonic()
    result = recipe_runner_cli("--reproduce", elsewhere, "--out", case.out)
    assert result.code == 2 and "holds a run" in result.err
    assert time.monotonic() - started < LIMIT
    assert tree_digest(tmp_path) == before


@pytest.mark.slow
def test_reproduce_compares_the_pixels_of_the_file_given(recipe_runner_cli, tmp_path, pristine):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    source = image_files(pristine)[0]
    red = tmp_path / "red.png"
    with Image.open(source) as original:
        info = PngInfo()
        for key, value in original.text.items():
            info.add_itxt(key, value)
        Image.new("RGB", original.size, (255, 0, 0)).save(red, pnginfo=info)  # painted, chunks kept
    before = red.read_bytes()
    scratch = tmp_path / "scratch"
    started = time.monotonic()
    result = recipe_runner_cli("--reproduce", red, "--out", scratch)
    assert result.code == 1, result.err
    assert "differs" in result.out and "pixel-identical" not in result.out
    assert time.monotonic() - started < LIMIT
    assert red.read_bytes() == before
    made = scratch / NAME / source.name
    assert np.array_equal(pixels(made), pixels(source))  # what it re-generated is the real image
    again = recipe_runner_cli("--reproduce", made, "--out", tmp_path / "scratch2")
    assert again.code == 0 and "pixel-identical" in again.out
    assert recipe_runner_cli("--reproduce", source, "--out", scratch).code == 0  # its own scratch: again


# --- 5. one run per folder: an OS lock, never blocking after a kill -------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from recipe_runner.records.runlock import hold
with hold(Path(sys.argv[1]), command="holder-for-test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def start_holder(folder: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_run_refuses_naming_the_first_and_a_killed_one_never_blocks(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine, guidance=8.0)  # a run would replace every image
    holder = start_holder(case.folder, 60)
    try:
        kept = images(case.folder)
        before = tree_digest(tmp_path)
        started = time.monotonic()
        result = run(recipe_runner_cli, case)
        assert result.code == 2
        assert f"process {holder.pid} (holder-for-test)" in result.err and "--wait" in result.err
        assert time.monotonic() - started < 5  # refused at once, before anything loads
        assert tree_digest(tmp_path) == before and images(case.folder) == kept
        repro = recipe_runner_cli("--reproduce", image_files(pristine)[0], "--out", case.out.parent / "scratch")
        assert repro.code == 0, repro.err  # another folder: not blocked
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert (case.folder / LOCK_NAME).exists()  # left by the killed holder: its lock went with it
    case.snap()
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    case.check()
    assert not (case.folder / LOCK_NAME).exists() and (case.folder / "history").is_dir()


@pytest.mark.slow
def test_wait_waits_for_the_other_run(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine)
    holder = start_holder(case.folder, 2)
    try:
        case.snap()
        result = run(recipe_runner_cli, case, "--force", "--wait")
        waited = time.monotonic() - case.started
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result.code == 0, result.err
    assert f"waiting: process {holder.pid}" in result.err
    assert 1.0 < waited < LIMIT
    case.check()
    assert not (case.folder / LOCK_NAME).exists()


def test_watch_rounds_and_reproduce_hold_the_lock(recipe_runner_cli, tmp_path, pristine, capsys):
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import watch

    case = Case(tmp_path, pristine, guidance=8.0)
    scratch = tmp_path / "scratch"
    holders = [start_holder(case.folder, 60), start_holder(scratch / NAME, 60)]
    try:
        kept = images(case.folder)
        case.snap()
        code = watch([case.recipe], [], load_plugins([]), Options(out=case.out, progress=False), rounds=1)
        err = capsys.readouterr().err
        assert code == 0 and f"process {holders[0].pid}" in err
        assert images(case.folder) == kept
        result = recipe_runner_cli("--reproduce", image_files(pristine)[0], "--out", scratch)
        assert result.code == 2 and f"process {holders[1].pid}" in result.err
        case.check()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(timeout=10)


GATE = """
import os, time
from pathlib import Path
from recipe_runner import hookimpl

@hookimpl
def after_batch(pipe, batch, images):
    release = Path(os.environ["H19_RELEASE"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_a_run_refused_under_the_lock_leaves_no_folder_behind(tmp_path):
    """The lock is taken (and the run folder made) before the checks against the pipeline class; a
    run those refuse leaves no folder and no lock file behind."""
    from recipe_runner.base.errors import RecipeError
    from recipe_runner.records.runlock import hold

    folder = tmp_path / "new" / "out" / NAME
    with pytest.raises(RecipeError), hold(folder):
        assert (folder / LOCK_NAME).is_file()
        raise RecipeError.one("refused by a check before loading")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with hold(tmp_path / "kept" / NAME):
        (tmp_path / "kept" / NAME / "x.png").write_bytes(b"written")
    assert sorted(p.name for p in (tmp_path / "kept" / NAME).iterdir()) == ["x.png"]


@pytest.mark.parametrize("planted", ["link", "fifo", "garbage"])
def test_a_link_fifo_or_garbage_at_the_lock_name_is_replaced(tmp_path, planted):
    from recipe_runner.records.runlock import hold

    folder = tmp_path / "out" / NAME
    folder.mkdir(parents=True)
    (tmp_path / "victim.txt").write_text("precious\n")
    lock = folder / LOCK_NAME
    if planted == "link":
        lock.symlink_to(tmp_path / "victim.txt")
    elif planted == "fifo":
        os.mkfifo(lock)
    else:
        lock.write_bytes(b"\xff not json")
    before = tree_digest(tmp_path, skip=tmp_path / "out")
    started = time.monotonic()
    with hold(folder, command="test") as path:
        assert stat.S_ISREG(path.lstat().st_mode) and json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 5
    assert not lock.exists() and not lock.is_symlink()
    assert tree_digest(tmp_path, skip=tmp_path / "out") == before


@pytest.mark.slow
def test_two_runs_at_once_one_refuses(tmp_path, pristine):
    """Two real processes into one folder: the second, started while the first is generating,
    refuses naming it; the folder is the first run's, every image with its history."""
    case = Case(tmp_path, pristine, guidance=8.0)
    plugin_dir = tmp_path.parent / (tmp_path.name + "-plugin")  # outside the hashed tree
    plugin_dir.mkdir()
    (plugin_dir / "h19_gate.py").write_text(GATE)
    release = plugin_dir / "release"
    env = {**os.environ, "H19_RELEASE": str(release),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "recipe_runner", str(case.recipe), "--out", str(case.out), "--no-progress",
               "-p", "h19_gate"]
    case.snap()
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (case.folder / "history").exists() and time.monotonic() < deadline:  # it is generating
            assert first.poll() is None
            time.sleep(0.05)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    finally:
        release.touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 2 and f"process {first.pid}" in second.stderr, second.stderr
    assert tree_digest(tmp_path, skip=case.out) == case.before
    data = case.manifest()
    assert all(r["status"] == "done" and r["params"]["guidance_scale"] == 8.0 for r in data["images"])
    assert sorted(p.name for p in image_files(case.folder)) == sorted(r["file"] for r in data["images"])
    history = next((case.folder / "history").iterdir())
    assert len(image_files(history)) == 2  # the images it replaced, kept


# --- 12. a hostile or damaged manifest never blocks the folder ----------------------------------------------

DAMAGED = {
    "recipe": lambda d: d.__setitem__("recipe", [1]),
    "environment": lambda d: d.__setitem__("environment", [1]),
    "optimizations": lambda d: d.__setitem__("optimizations", [1]),
    "world_size": lambda d: d["environment"].__setitem__("world_size", "abc"),
    "model_revisions": lambda d: d["environment"].__setitem__("model_revisions", [1, 2]),
    "images": lambda d: d.__setitem__("images", {"a": 1}),
    "record": lambda d: d["images"][0].__setitem__("batch_jobs", "x"),
    "json": None,
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_manifest_is_set_aside_and_the_images_read(recipe_runner_cli, tmp_path, pristine, damage):
    case = Case(tmp_path, pristine)
    if DAMAGED[damage] is None:
        (case.folder / "manifest.json").write_text('{"recipe": {"name": "records"}, "images": [')
    else:
        data = case.manifest()
        DAMAGED[damage](data)
        case.write_manifest(data)
    bad = (case.folder / "manifest.json").read_bytes()
    kept = images(case.folder)
    case.snap()
    dry = run(recipe_runner_cli, case, "--dry-run")
    assert dry.code == 0, dry.err
    assert (case.folder / "manifest.json").read_bytes() == bad  # a dry run changes nothing
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    assert "not a valid manifest" in result.err and "set aside" in result.err
    assert "0 new, 0 regenerated, 2 unchanged" in result.out  # recognised by what the images carry
    case.check()
    assert images(case.folder) == kept and not (case.folder / "history").exists()
    aside = list(case.folder.glob("manifest.json.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bad
    again = run(recipe_runner_cli, case)
    assert again.code == 0 and "nothing to do" in again.out and "warning" not in again.err


def test_journal_lines_of_the_wrong_types_are_ignored(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine)
    name = image_files(case.folder)[0].name
    lines = [{"file": name, "status": "done", "key": 5}, {"file": name, "index": "x"}, {"file": name, "batch_jobs": 3}]
    (case.folder / ".manifest.journal.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    kept = images(case.folder)
    case.snap()
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    assert "3 line(s) that are not image records" in result.err
    case.check()
    assert images(case.folder) == kept


# --- 13. records and temporary files --------------------------------------------------------------------

def test_an_image_written_before_its_journal_line_is_kept(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine)
    data = case.manifest()
    for record in data["images"]:  # as the manifest says at a run's start: planned, not yet written
        record.update(status="pending", sha256=None, rank=None, seconds=None)
    case.write_manifest(data)
    kept = images(case.folder)
    case.snap()
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    assert "0 new, 0 regenerated, 2 unchanged" in result.out and "made 0" in result.out
    case.check()
    assert images(case.folder) == kept and not (case.folder / "history").exists()
    after = case.manifest()["images"]
    assert all(r["status"] == "done" and r["batch_jobs"] == [r["index"]] for r in after)


def test_temporary_files_of_a_killed_run_are_removed(recipe_runner_cli, tmp_path, pristine):
    case = Case(tmp_path, pristine)
    name = image_files(case.folder)[0].name
    (case.folder / f".{name}.tmp-99999").write_bytes(b"half an image")
    (case.folder / ".grid.png.tmp-123").symlink_to(tmp_path / "victim.txt")
    (case.folder / ".index.html.tmp-7").write_text("<html")
    kept = images(case.folder)
    case.snap()
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    assert "nothing to do" in result.out
    case.check()
    assert not [p for p in case.folder.iterdir() if ".tmp-" in p.name]
    assert images(case.folder) == kept and (tmp_path / "victim.txt").read_text() == "precious\n"


@pytest.mark.parametrize("lost", ["grid.png", "index.html"])
def test_a_lost_grid_or_gallery_is_written_again(recipe_runner_cli, tmp_path, pristine, lost):
    case = Case(tmp_path, pristine)
    written = (case.folder / lost).read_bytes()
    (case.folder / lost).unlink()  # a full disk while it was written: the images are all there
    kept = images(case.folder)
    case.snap()
    result = run(recipe_runner_cli, case)
    assert result.code == 0, result.err
    assert "nothing to do" in result.out
    case.check()
    assert (case.folder / lost).is_file()
    if lost == "grid.png":
        assert np.array_equal(pixels(case.folder / lost), pixels(pristine / lost))
    else:
        assert (case.folder / lost).read_bytes() == written
    assert {k: v for k, v in images(case.folder).items() if k != "grid.png"} == kept
    assert not (case.folder / LOCK_NAME).exists()
    assert stat.S_ISREG((case.folder / "manifest.json").lstat().st_mode)


def test_a_gallery_drawn_again_reads_only_the_inputs_the_recipe_names(tmp_path, pristine):
    """A record's input image (``image``) naming a FIFO or a private image outside the folder: the
    gallery written again for a folder with nothing to do shows the recipe's inputs, never those."""
    from tests.conftest import run_subprocess

    case = Case(tmp_path, pristine)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    from PIL import Image

    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "private.png")
    data = case.manifest()
    data["environment"]["recipe_folder"] = str(tmp_path)
    data["images"][0]["image"] = "fifo.png"
    data["images"][1]["image"] = "private.png"
    case.write_manifest(data)
    (case.folder / "index.html").unlink()
    case.snap()
    result = run_subprocess(case.recipe, "--out", case.out, "--no-progress", timeout=60)  # a hang fails here
    assert result.code == 0, result.err
    assert "nothing to do" in result.out
    case.check()
    page = (case.folder / "index.html").read_text()
    assert "fifo.png" not in page and "private.png" not in page and "base64" not in page
