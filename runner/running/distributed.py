"""Several processes, one machine or many: under ``torchrun`` or ``accelerate launch`` the planned
batches are shared out so each job is done exactly once, by whole batches, so every image comes
out of the same batch as in a one-process run (same pixels, at the same per-process thread count).

Each rank writes its own images and a partial manifest; after a barrier, rank 0 merges them into
``manifest.json``. Outside a launcher (no ``WORLD_SIZE`` > 1) nothing here imports accelerate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..plan.batches import Batch
from ..records.manifest import MANIFEST_NAME, PARTIAL, Manifest

if TYPE_CHECKING:
    from accelerate import PartialState



@dataclass
class Dist:
    """This process's place among the launcher's processes (rank 0 of 1 when not launched)."""

    rank: int = 0
    world_size: int = 1
    state: PartialState | None = None  # when launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1 and self.state is not None:
            self.state.wait_for_everyone()

    def device(self, device: str) -> str:
        """Each rank on its own accelerator: "cuda" becomes this rank's "cuda:N"."""
        if self.world_size > 1 and self.state is not None and device == "cuda":
            return str(self.state.device)
        return device


def launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def detect(device_spec: str) -> Dist:
    """Join the launcher's process group (gloo on CPU, NCCL on GPUs) when there is one."""
    if launched_world_size() <= 1:
        return Dist()
    from accelerate import PartialState

    # On a CPU, PartialState needs cpu=True to see the ranks (and picks gloo).
    state = PartialState(cpu=device_spec == "cpu")
    return Dist(state.process_index, state.num_processes, state)


def shard(batches: Sequence[Batch], world_size: int) -> list[list[Batch]]:
    """Whole batches to ranks, deterministic, each rank's in plan order. With a ``model`` axis,
    whole models go to ranks so that each rank loads as few as it can: with at least as many models
    as ranks, each model goes whole to the rank with the fewest images so far (largest models
    first); with fewer, each model gets ranks in proportion to its images and shares its batches
    among them. Within a set of ranks, each batch goes to the rank with the fewest images so far
    (the lowest rank on a tie). Batches are never split, so every image comes out of the same batch
    as in a one-process run."""
    groups: dict[str, list[Batch]] = {}
    for batch in batches:
        groups.setdefault(json.dumps(batch.jobs[0].axes.get("model"), sort_keys=True, default=repr), []).append(batch)
    members = list(groups.values())
    if not members:
        return [[] for _ in range(world_size)]
    sizes = [sum(b.size for b in g) for g in members]
    shares: list[list[Batch]] = [[] for _ in range(world_size)]
    if len(members) >= world_size:
        load = [0] * world_size
        for i in sorted(range(len(members)), key=lambda i: -sizes[i]):
            rank = min(range(world_size), key=lambda r: (load[r], r))
            shares[rank].extend(members[i])
            load[rank] += sizes[i]
    else:
        ranks: list[list[int]] = [[i] for i in range(len(members))]
        for rank in range(len(members), world_size):
            neediest = max(range(len(members)), key=lambda i: (sizes[i] / len(ranks[i]), -i))
            ranks[neediest].append(rank)
        for group, its_ranks in zip(members, ranks):
            images = {r: 0 for r in its_ranks}
            for batch in group:
                rank = min(its_ranks, key=lambda r: (images[r], r))
                shares[rank].append(batch)
                images[rank] += batch.size
    return [sorted(share, key=lambda b: b.index) for share in shares]


def partial_path(folder: Path, rank: int) -> Path:
    return folder / PARTIAL.format(rank=rank)


def merge(folder: Path, world_size: int) -> Manifest:
    """Fold the ranks' partial manifests into one, ``manifest.json`` of ``folder`` (not yet saved):
    each job's record from the rank that did it, the ranks' timings side by side."""
    parts = [Manifest.load(partial_path(folder, r)) for r in range(world_size)]
    merged = parts[0]
    for part in parts[1:]:
        for i, record in enumerate(part.images):
            if record.status == "done":
                merged.images[i] = record
    merged.environment["world_size"] = world_size
    merged.timings = {"ranks": [part.timings for part in parts]}
    merged.path = folder / MANIFEST_NAME
    return merged
