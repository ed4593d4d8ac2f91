"""``recipe-run --watch``: warm re-runs on every save, the watched files, the pipelines a session
keeps, and the gallery page that refreshes itself."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from recipe_runner.running.watch import Relevant, Watcher, digest, release_unused, snapshot
from recipe_runner.views import refresh
from tests.conftest import REPO, default_sigint, image_files, tiny_recipe

RECIPE = tiny_recipe("a red fox", seeds="{seeds}")

COUNTER = '''
import os
from recipe_runner import hookimpl

@hookimpl
def pipeline_ready(pipe, recipe, context):
    with open(os.environ["READY_LOG"], "a") as log:
        log.write(recipe.model.id + "\\n")
'''


def save(path: Path, text: str) -> None:
    """As editors save: a temporary file beside it, renamed over it."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen | None = None, limit: float = 120,
               what: str = "") -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) while waiting for {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def done_files(folder: Path) -> list[str]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    return [r["file"] for r in manifest["images"] if r.get("status") == "done"]


def state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in image_files(folder)}


# --- the session, end to end ------------------------------------------------------------------------

@pytest.mark.slow
def test_watch_runs_new_jobs_on_a_warm_pipeline_survives_an_invalid_edit_and_ends_with_130(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(seeds="[0]"))
    (tmp_path / "counter.py").write_text(COUNTER)
    ready = tmp_path / "ready.log"
    out_log, err_log = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}", OMP_NUM_THREADS="1", READY_LOG=str(ready))
    folder = tmp_path / "out" / "recipe"
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", "--watch", "recipe.toml", "--out", "out",
                                 "-p", "counter", "--no-progress"], cwd=tmp_path, env=env, stdout=out, stderr=err,
                                preexec_fn=default_sigint)
    try:
        def rounds_done() -> int:
            return err_log.read_text().count("watching ")

        wait_until(lambda: rounds_done() == 1, proc, what="the first round")
        assert len(done_files(folder)) == 1, err_log.read_text()
        before = state(folder)
        stamp = (folder / refresh.STAMP_FILE).read_text()
        page = (folder / "index.html").read_text()
        assert refresh.MARK in page and "gallery-stamp.js" in page
        assert stamp == f"window.recipeRunnerStamp = {json.dumps(refresh.stamp_of_page(page))};\n"

        save(recipe, RECIPE.format(seeds="[0, 1]"))  # one more seed: exactly one new image
        wait_until(lambda: rounds_done() == 2, proc, what="the round after adding a seed")
        assert "changed: recipe.toml" in err_log.read_text()
        after = state(folder)
        assert len(done_files(folder)) == 2 and len(after) == 2
        assert {k: v for k, v in after.items() if k in before} == before  # same bytes, same mtime
        assert (folder / refresh.STAMP_FILE).read_text() != stamp  # an open gallery tab reloads

        save(recipe, RECIPE.format(seeds="[0, 1]").replace("seeds", "sedes"))  # invalid: exit-2 message, alive
        wait_until(lambda: rounds_done() == 3, proc, what="the round of the invalid edit")
        errors = err_log.read_text()
        assert "error: recipe.toml:" in errors and "sedes" in errors and "Traceback" not in errors
        assert proc.poll() is None

        recipe.write_text(RECIPE.format(seeds="[0, 1, 2]"))  # fixed (written in place this time): runs again
        wait_until(lambda: rounds_done() == 4, proc, what="the round of the fixed edit")
        assert len(done_files(folder)) == 3 and len(state(folder)) == 3
        assert {k: v for k, v in state(folder).items() if k in after} == after
        assert ready.read_text().splitlines() == ["tiny:sd15"]  # one pipeline for the whole session

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted" in err_log.read_text() and "Traceback" not in err_log.read_text()


def test_watch_takes_the_run_options_and_refuses_other_modes(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE.format(seeds="[0]"))
    for args in (("--watch", recipe, "--dry-run"), ("--watch", recipe, "--lock"), ("--watch",),
                 ("--watch", tmp_path / "missing.toml")):
        result = recipe_runner_cli(*args)
        assert result.code == 2, (args, result.err)
        assert "Traceback" not in result.err
    from recipe_runner.cli.main import APPLIES, MODES, RECIPE_MODES

    assert MODES["watch"] == "--watch" and "watch" in RECIPE_MODES
    for dest in ("sets", "out", "plugins", "allow_pickle", "trust_remote_code", "no_progress", "strict_plugins", "locked"):
        assert "watch" in APPLIES[dest][1], dest


# --- what is watched --------------------------------------------------------------------------------

def test_relevant_keeps_the_watched_files_only_by_path_or_real_path(tmp_path):
    target = tmp_path / "real.toml"
    target.write_text("x")
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    relevant = Relevant([link.absolute()])
    assert relevant(None, str(link.absolute()))
    assert relevant(None, str(target))  # a save through the link changes the file it points at
    assert not relevant(None, str(tmp_path / ".link.toml.swp"))
    assert not relevant(None, str(tmp_path / "other.toml"))


@pytest.mark.slow
def test_a_burst_of_saves_is_one_change_and_other_files_or_unchanged_bytes_start_nothing(tmp_path):
    watched, other = tmp_path / "recipe.toml", tmp_path / "notes.txt"
    watched.write_text("seeds = [0]\n")
    watcher = Watcher(step_ms=150, wake_ms=200)
    try:
        snap = snapshot([watched])

        def burst() -> None:
            for i in range(1, 6):  # five saves 20 ms apart: one change, seen after the last
                save(watched, f"seeds = [0, {i}]\n")
                time.sleep(0.02)

        thread = threading.Thread(target=burst)
        thread.start()
        changed = watcher.wait(snap)
        thread.join()
        assert changed == [watched]
        assert watched.read_text() == "seeds = [0, 5]\n"

        snap = snapshot([watched])
        result: list[list[Path]] = []
        waiting = threading.Thread(target=lambda: result.append(watcher.wait(snap)))
        waiting.start()
        other.write_text("not watched")
        save(watched, watched.read_text())  # saved, same bytes: nothing to do
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not result
        save(watched, "seeds = [0, 1, 2]\n")
        waiting.join(timeout=30)
        assert result == [[watched]]
    finally:
        watcher.close()


def test_a_save_while_a_round_runs_is_seen_when_it_ends(tmp_path):
    watched = tmp_path / "recipe.toml"
    watched.write_text("a")
    snap = {watched: digest(watched)}
    watched.write_text("b")  # as if saved while the round ran, before any watch was open
    watcher = Watcher()
    try:
        assert watcher.wait(snap) == [watched]
    finally:
        watcher.close()


# --- the pipelines a session keeps -------------------------------------------------------------------

class FakeBuilt:
    def __init__(self, model_id: str) -> None:
        self.context = SimpleNamespace(recipe=SimpleNamespace(model=SimpleNamespace(id=model_id)))


@pytest.mark.slow
def test_release_unused_drops_the_models_no_recipe_uses_and_frees_them():
    from recipe_runner.pipelines.cache import Entry, ModelCache

    cache = ModelCache()
    kept, dropped, derived = FakeBuilt("model-a"), FakeBuilt("model-b"), FakeBuilt("model-b")
    cache.entries = {"a": Entry({"text-to-image": kept}), "b": Entry({"text-to-image": dropped, "image-to-image": derived})}
    gone = weakref.ref(dropped)
    del dropped, derived
    assert release_unused(cache, ["a"]) == ["model-b"]
    gc.collect()
    assert list(cache.entries) == ["a"] and cache.entries["a"].by_task["text-to-image"] is kept
    assert gone() is None  # nothing else holds it: the memory is free
    assert release_unused(cache, ["a"]) == []


def test_the_model_key_leaves_out_what_an_edit_changes_without_a_reload(recipe_runner_write_recipe):
    from recipe_runner.pipelines.cache import model_key
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options, prepare

    plugins = load_plugins([])
    base = """
        [model]
        id = "{model}"
        device = "cpu"
        {scheduler}
        [params]
        num_inference_steps = {steps}
        [matrix]
        prompts = [{prompts}]
        seeds = {seeds}
        {axes}
        {extra}
    """

    def key(**changes: str) -> str:
        values = dict(model="tiny:sd15", scheduler="", steps="2", prompts='"a fox"', seeds="[0]", axes="", extra="")
        values.update(changes)
        path = recipe_runner_write_recipe(base.format(**values))
        prepared = prepare(path, [], plugins, Options())
        return model_key(prepared.recipe, prepared.enabled, False)

    same = key()
    assert key(scheduler='[scheduler]\nname = "EulerDiscreteScheduler"') == same
    assert key(steps="3", prompts='"a cat", "a dog"', seeds="[0, 1, 2]") == same
    assert key(axes="[matrix.axes]\nguidance_scale = [5.0, 7.5]") == same
    assert key(model="tiny:sdxl") != same
    assert key(extra="[optimizations]\nattention_slicing = true") == same  # switched in place
    assert key(extra="[optimizations]\nchannels_last = true") != same  # applied at a load only


# --- the gallery page ---------------------------------------------------------------------------------

MANIFEST = {"recipe": {"name": "r", "model": {"id": "tiny:sd15"}}, "environment": {},
            "images": [{"index": 0, "file": "a.png", "prompt": "a fox", "seed": 0, "status": "done", "sha256": "1"}]}


def test_the_gallery_refreshes_itself_only_under_watch_and_its_stamp_follows_the_page(tmp_path):
    from recipe_runner.views.gallery import render, write_gallery

    assert refresh.MARK not in render(MANIFEST)  # a plain run's page has only its filter script
    write_gallery(tmp_path, MANIFEST)
    assert not (tmp_path / refresh.STAMP_FILE).exists()

    with refresh.live():
        page = render(MANIFEST)
        assert page.count(refresh.MARK) == 1 and 'src = "gallery-stamp.js?t="' in page
        assert page.endswith("</script></body></html>\n")
        write_gallery(tmp_path, MANIFEST)
        first = (tmp_path / refresh.STAMP_FILE).read_text()
        assert json.dumps(refresh.stamp_of_page((tmp_path / "index.html").read_text())) in first
        write_gallery(tmp_path, MANIFEST)
        assert (tmp_path / refresh.STAMP_FILE).read_text() == first  # same page: an open tab stays put
        more = dict(MANIFEST, images=[*MANIFEST["images"], dict(MANIFEST["images"][0], index=1, file="b.png", seed=1)])
        write_gallery(tmp_path, more)
        assert (tmp_path / refresh.STAMP_FILE).read_text() != first
    assert render(MANIFEST) == render(MANIFEST) and refresh.MARK not in render(MANIFEST)


def test_a_watch_round_on_an_up_to_date_folder_says_nothing_to_do_and_loads_no_model(
        recipe_runner_cli, recipe_runner_write_recipe, loads, tmp_path, capsys):
    """The first round of --watch is the loop of a plain run: an up-to-date folder is nothing to do."""
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import watch

    recipe = recipe_runner_write_recipe(RECIPE.format(seeds="[0, 1]"))
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    before = state(tmp_path / "out" / "recipe")
    loads.count = 0  # from here: the watch round's loads
    capsys.readouterr()
    assert watch([recipe], [], load_plugins(), Options(out=tmp_path / "out", progress=False), rounds=1) == 0
    out = capsys.readouterr().out
    assert "nothing to do, nothing loaded" in out
    assert loads.count == 0
    assert state(tmp_path / "out" / "recipe") == before


# --- #20 item 6: invalid edits keep the models, Ctrl-C when idle, a save stops a long round ------------

class Counting:
    """A plugin counting the pipelines made ready and the batches generated; ``on_batch`` is called
    after each batch with its index."""

    def __init__(self, on_batch: Callable[[int], None] | None = None) -> None:
        self.loads = 0
        self.batches: list[int] = []
        self.on_batch = on_batch

    def plugin(self):
        from recipe_runner import hookimpl

        counting = self

        class Plugin:
            @hookimpl
            def pipeline_ready(self, pipe, recipe, context):
                counting.loads += 1

            @hookimpl
            def after_batch(self, pipe, batch, images):
                counting.batches.append(batch.index)
                if counting.on_batch is not None:
                    counting.on_batch(batch.index)

        return Plugin()


class NoWait:
    """A watcher that never waits: the files that differ now, else Ctrl-C (the user stops the session)."""

    def __init__(self) -> None:
        self.waits = 0

    def wait(self, snap):
        self.waits += 1
        changed = [p for p in snap if digest(p) != snap[p]]
        if not changed:
            raise KeyboardInterrupt
        return changed

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_an_invalid_edit_keeps_the_models_and_is_reported_before_anything_is_released(
        recipe_runner_register_plugin, tmp_path, capsys):
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import WatchSession

    counting = Counting()
    recipe_runner_register_plugin(counting.plugin(), "counting")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(seeds="[0]"))
    session = WatchSession([recipe], [], load_plugins(), Options(out=tmp_path / "out", progress=False))
    assert session.round() is True and counting.loads == 1
    # a model-changing edit (another optimization: another pipeline) that fails a check made before loading
    save(recipe, RECIPE.format(seeds="[0]") + '[optimizations]\nattention_slicing = true\n'
         '[scheduler]\nname = "FlowMatchEulerDiscreteScheduler"\n')
    capsys.readouterr()
    assert session.round() is False
    err = capsys.readouterr().err
    assert "error: " in err and "FlowMatchEulerDiscreteScheduler" in err
    assert "released" not in err  # the model stays: the next (fixed) round reuses it
    assert len(session.session.cache.entries) == 1 and counting.loads == 1
    save(recipe, RECIPE.format(seeds="[0, 1]"))  # fixed, one more seed
    assert session.round() is True
    assert counting.loads == 1 and len(counting.batches) == 2  # warm: no reload, only the new image


@pytest.mark.slow
def test_ctrl_c_while_idle_says_what_the_session_made_and_that_nothing_is_left(
        recipe_runner_cli, recipe_runner_write_recipe, tmp_path, capsys):
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import watch

    recipe = recipe_runner_write_recipe(RECIPE.format(seeds="[0, 1]"))
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0  # 2 images, by this process
    save(recipe, RECIPE.format(seeds="[0, 1, 2]"))
    capsys.readouterr()
    assert watch([recipe], [], load_plugins(), Options(out=out, progress=False), watcher=NoWait()) == 130
    err = capsys.readouterr().err
    assert "this session made 1 image(s) in 1 round; every job is done, nothing is left to do" in err, err
    assert "run the same command again" not in err


@pytest.mark.slow
def test_a_save_during_a_long_round_stops_it_at_a_batch_boundary_and_the_next_round_starts(
        recipe_runner_register_plugin, tmp_path, capsys):
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import watch

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(seeds="30"))
    folder = tmp_path / "out" / "recipe"

    def on_batch(index: int) -> None:
        if index == 1:  # the second of 30 batches: the user saves an edit
            save(recipe, RECIPE.format(seeds="[0, 1, 2, 3]"))

    counting = Counting(on_batch)
    recipe_runner_register_plugin(counting.plugin(), "counting")
    watcher = NoWait()
    began = time.monotonic()
    code = watch([recipe], [], load_plugins(), Options(out=tmp_path / "out", progress=False), watcher=watcher)
    seconds = time.monotonic() - began
    captured = capsys.readouterr()
    err = captured.err
    assert code == 130 and watcher.waits == 2, err
    assert "4 images: 2 new, 0 regenerated, 2 unchanged" in captured.out  # the finished batches' images kept
    assert "recipe: stopped after 2 of 30 new image(s): a watched file changed" in err
    assert "changed: " in err and "recipe.toml" in err
    # round 1 made batches 0 and 1 and stopped; round 2 made seeds 2 and 3 on the warm pipeline
    assert len(counting.batches) == 4 and counting.loads == 1
    assert "this session made 4 image(s) in 2 rounds; every job is done" in err
    assert len(done_files(folder)) == 4
    assert len(image_files(folder)) == 4
    print(f"stopped at a batch boundary and finished the edit in {seconds:.1f} s")


@pytest.mark.slow
def test_a_watch_round_after_an_output_only_edit_redraws_the_views_and_loads_nothing(
        recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_register_plugin, tmp_path, capsys):
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import watch

    recipe = recipe_runner_write_recipe(RECIPE.format(seeds="[0, 1]").replace('["a red fox"]', '["a red fox", "a blue house"]'))
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    folder = out / "recipe"
    before = state(folder)
    counting = Counting()
    recipe_runner_register_plugin(counting.plugin(), "counting")
    save(recipe, recipe.read_text() + '[output.grid]\nz = "prompt"\n')
    capsys.readouterr()
    assert watch([recipe], [], load_plugins(), Options(out=out, progress=False), rounds=1) == 0
    assert "nothing to do, nothing loaded; grid and gallery redrawn" in capsys.readouterr().out
    assert counting.loads == 0 and {k: v for k, v in state(folder).items() if not k.startswith("grid")} == before
    assert sorted(p.name for p in folder.glob("grid*.png")) == ["grid-01-a-red-fox.png", "grid-02-a-blue-house.png"]


def test_what_ctrl_c_says_depends_on_what_is_left():
    from recipe_runner.running.watch import stopped

    assert stopped(3, 2, True) == ("interrupted while watching: this session made 3 image(s) in 2 rounds; "
                                   "every job is done, nothing is left to do")
    assert "do not validate" in stopped(0, 1, False, invalid=True)
    assert "run" in stopped(1, 1, False) and "the same command again" in stopped(1, 1, False)
