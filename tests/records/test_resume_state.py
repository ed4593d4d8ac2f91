"""The data rooms without a pipeline: resume's state from a folder, the typed manifest, the journal,
the distributed merge and the paths module. Fast: no torch, no model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recipe_runner.base.errors import RecipeError
from recipe_runner.base.paths import is_local_reference, sha256_file
from recipe_runner.pipelines.sources import locate
from recipe_runner.plan.matrix import Job
from recipe_runner.records.journal import Journal
from recipe_runner.records.keys import Keys
from recipe_runner.records.manifest import Manifest
from recipe_runner.records.resume import HISTORY, ResumeState, remove_leftovers, resume
from recipe_runner.running import distributed

JOBS = [Job(index=i, prompt=f"prompt {i}", seed=i, params={"width": 8, "height": 8}) for i in range(3)]
RECIPE = {"name": "rooms", "run": {"batch_size": 1}}


def keys(model: str = "m") -> Keys:
    return Keys({"{}": {"model": model}}, JOBS, {})


def new_manifest(folder: Path, batch_setting: int | str = 1) -> Manifest:
    return Manifest.for_jobs(folder, {**RECIPE, "run": {"batch_size": batch_setting}}, {"threads": 1}, JOBS, "png")


def first_run(folder: Path, batch_size: int = 1, batch_setting: int | str = 1) -> Manifest:
    """What a finished run leaves: every image written and recorded, manifest.json saved."""
    manifest = new_manifest(folder, batch_setting)
    state = resume(manifest, JOBS, keys(), batch_size, batch_setting)
    state.apply(manifest)
    for job in JOBS:
        data = f"image {job.index}".encode()
        manifest.file_for(job).write_bytes(data)
        manifest.written(job, sha256_file(manifest.file_for(job)), rank=0)
    manifest.save()
    return manifest


def test_a_folder_with_an_unchanged_an_edited_and_a_missing_image(tmp_path):
    before = first_run(tmp_path)
    done, edited, missing = (before.file_for(job) for job in JOBS)
    edited.write_bytes(b"edited by hand")
    missing.unlink()
    done_stat = done.stat()

    manifest = new_manifest(tmp_path)
    state = resume(manifest, JOBS, keys(), 1, 1)
    assert isinstance(state, ResumeState)
    assert state.done == {0: sha256_file(done)}
    assert state.pending == {1, 2} and state.regenerated == {1}
    assert [(r.file, r.reason) for r in state.replaced] == [(edited.name, "changed on disk since it was written")]
    assert [[j.index for j in b.jobs] for b in state.todo()] == [[1], [2]]  # as the first run planned them
    assert state.summary() == "1 new, 1 regenerated, 1 unchanged"

    state.apply(manifest)
    history = state.retire(tmp_path)
    assert history is not None and history.parent == tmp_path / HISTORY
    assert not edited.exists() and (history / edited.name).read_bytes() == b"edited by hand"  # moved, kept
    described = json.loads((history / "manifest.json").read_text())
    assert [(r["file"], r["replaced_because"], r["sha256"]) for r in described["images"]] == [
        (edited.name, "changed on disk since it was written", before.to_json()["images"][1]["sha256"])]
    assert described["recipe"] == before.recipe
    data = manifest.to_json()
    assert [r["status"] for r in data["images"]] == ["done", "pending", "pending"]
    assert [r["key"] for r in data["images"]] == keys().keys
    assert data["images"][0]["sha256"] == sha256_file(done) and data["images"][0]["batch_jobs"] == [0]
    assert (done.stat().st_mtime_ns, done.stat().st_ino) == (done_stat.st_mtime_ns, done_stat.st_ino)


def test_a_changed_job_is_regenerated_and_a_file_no_job_makes_goes_to_history(tmp_path):
    before = first_run(tmp_path)
    hashes = {job.index: sha256_file(before.file_for(job)) for job in JOBS}
    fewer = JOBS[:2]
    manifest = Manifest.for_jobs(tmp_path, RECIPE, {}, fewer, "png")
    state = resume(manifest, fewer, Keys({"{}": {"model": "other"}}, fewer, {}), 1, 1)
    assert state.done == {} and state.pending == state.regenerated == {0, 1}
    assert [r.reason for r in state.replaced] == ["its job changed since it was made"] * 2 + [
        "no job of this recipe makes it any more"]
    history = state.retire(tmp_path)
    assert history is not None
    assert sorted(p.name for p in tmp_path.glob("*.png")) == []
    assert {sha256_file(history / before.record(job).file) for job in JOBS} == set(hashes.values())
    again = resume(Manifest.for_jobs(tmp_path, RECIPE, {}, fewer, "png"), fewer, Keys({"{}": {"model": "other"}}, fewer, {}),
                   1, 1)
    assert again.replaced == [] and again.regenerated == set()  # nothing left to move


def test_force_regenerates_every_job_and_keeps_what_it_replaces(tmp_path):
    first_run(tmp_path)
    state = resume(new_manifest(tmp_path), JOBS, keys(), 1, 1, force=True)
    assert state.done == {} and state.regenerated == {0, 1, 2}
    assert {r.reason for r in state.replaced} == {"--force"}


def test_recorded_batches_are_kept_while_the_batch_setting_is_unchanged(tmp_path):
    first_run(tmp_path, batch_size=2, batch_setting="auto")  # e.g. after an out-of-memory backoff
    for path in tmp_path.glob("*.png"):
        path.unlink()
    kept = resume(new_manifest(tmp_path, "auto"), JOBS, keys(), 1, "auto")
    assert [[j.index for j in b.jobs] for b in kept.batches] == [[0, 1], [2]]
    assert kept.pending == {0, 1, 2} and kept.regenerated == set()
    fresh = resume(new_manifest(tmp_path, 1), JOBS, keys(), 1, 1)
    assert [[j.index for j in b.jobs] for b in fresh.batches] == [[0], [1], [2]]


def test_new_jobs_are_planned_among_themselves(tmp_path):
    """Adding jobs: the unchanged ones are not recomputed to fill a batch with the new ones."""
    first_run(tmp_path, batch_size=2, batch_setting=2)
    grown = [*JOBS, Job(index=3, prompt="prompt 3", seed=3, params={"width": 8, "height": 8})]
    manifest = Manifest.for_jobs(tmp_path, {**RECIPE, "run": {"batch_size": 2}}, {}, grown, "png")
    state = resume(manifest, grown, Keys({"{}": {"model": "m"}}, grown, {}), 2, 2)
    assert sorted(state.done) == [0, 1, 2] and state.pending == {3}
    assert [[j.index for j in b.jobs] for b in state.todo()] == [[3]]


def test_an_image_written_before_its_journal_line_is_done_by_its_embedded_key(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from recipe_runner.records.outputs import encode

    manifest = new_manifest(tmp_path)
    path = manifest.file_for(JOBS[1])
    path.write_bytes(encode(Image.new("RGB", (8, 8)), "png", 90, {"job": json.dumps({"key": keys().of(JOBS[1])})}))
    state = resume(manifest, JOBS, keys(), 1, 1)
    assert state.done == {1: sha256_file(path)} and state.pending == {0, 2} and state.replaced == []


def test_journal_lines_win_over_the_manifest_and_leftovers_are_removed(tmp_path):
    manifest = new_manifest(tmp_path)
    resume(manifest, JOBS, keys(), 1, 1).apply(manifest)
    manifest.save()  # every job pending on disk
    journal = Journal(manifest, keys())
    job = JOBS[0]
    manifest.file_for(job).write_bytes(b"written")
    manifest.written(job, sha256_file(manifest.file_for(job)), rank=0)
    journal.append(manifest.record(job))
    journal.commit()  # durable, not folded yet
    assert json.loads((tmp_path / "manifest.json").read_text())["images"][0]["status"] == "pending"

    state = resume(new_manifest(tmp_path), JOBS, keys(), 1, 1)
    assert state.done == {0: sha256_file(manifest.file_for(job))} and state.pending == {1, 2}
    remove_leftovers(tmp_path)
    assert not list(tmp_path.glob(".manifest*"))


def test_the_manifest_reads_back_as_written(tmp_path):
    manifest = first_run(tmp_path)
    manifest.record_timings(1.0, 0.5, 2.0, [{"batch": 0, "size": 1, "seconds": 0.1, "write_seconds": 0.25}])
    manifest.save()
    text = (tmp_path / "manifest.json").read_text()
    again = Manifest.load(tmp_path / "manifest.json")
    again.save()
    assert (tmp_path / "manifest.json").read_text() == text
    assert again.timings["write_seconds"] == 0.25
    assert "stale" not in Manifest.for_jobs(tmp_path, RECIPE, {}, JOBS, "png").to_json()  # before resume looked


def test_distributed_merge_takes_each_record_from_the_rank_that_did_it(tmp_path):
    parts = []
    for rank in range(2):
        part = Manifest.for_jobs(tmp_path, RECIPE, {"world_size": 2}, JOBS, "png",
                                 path=distributed.partial_path(tmp_path, rank))
        for job in JOBS:
            if job.index % 2 == rank:
                part.written(job, f"sha-{job.index}", rank)
        part.record_timings(rank, 0.0, 1.0, [])
        part.save()
        parts.append(part)
    merged = distributed.merge(tmp_path, 2)
    assert merged.path == tmp_path / "manifest.json"
    assert [(r.status, r.rank, r.sha256) for r in merged.images] == [("done", 0, "sha-0"), ("done", 1, "sha-1"),
                                                                       ("done", 0, "sha-2")]
    assert [t["load_seconds"] for t in merged.timings["ranks"]] == [0, 1]


def test_locate_and_local_references(tmp_path):
    assert is_local_reference("./model") and is_local_reference("C:\\models") and not is_local_reference("org/model")
    (tmp_path / "model").mkdir()
    assert locate("model", tmp_path, "model.id", None) == str(tmp_path / "model")
    assert locate("org/model", tmp_path, "model.id", None) == "org/model"
    with pytest.raises(RecipeError, match="no such folder"):
        locate("./missing", tmp_path, "model.id", None)
    with pytest.raises(RecipeError, match="unknown tiny pipeline kind") as caught:
        locate("tiny:nope", tmp_path, "model.id", None)
    assert isinstance(caught.value.__cause__, ValueError)  # --debug shows where it came from


@pytest.mark.slow
def test_the_data_rooms_are_light_and_journal_does_not_need_outputs():
    code = ("import sys, recipe_runner.records.resume, recipe_runner.base.paths, recipe_runner.records.keys, recipe_runner.records.manifest; "
            "heavy = {'torch', 'diffusers', 'PIL'} & set(sys.modules); assert not heavy, heavy; "
            "[sys.modules.pop(m) for m in list(sys.modules) if m.startswith('recipe_runner')]; "
            "import recipe_runner.records.journal; assert 'recipe_runner.records.outputs' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_history_folder_reads_back_with_the_manifest(tmp_path):
    """A rank's partial manifest names the history folder; the merged manifest keeps it."""
    manifest = first_run(tmp_path)
    manifest.set_history("history/2026-12-01T14-03-24Z", [("a.png", "its job changed since it was made")])
    manifest.save()
    again = Manifest.load(tmp_path / "manifest.json")
    assert again.to_json()["history"] == {"folder": "history/2026-12-01T14-03-24Z",
                                          "replaced": [{"file": "a.png", "reason": "its job changed since it was made"}]}
    (tmp_path / "plain").mkdir()
    plain = first_run(tmp_path / "plain")
    assert "history" not in Manifest.load(plain.path).to_json()
