"""The reference's PuzzleDataset sampling (spec §6), made deterministic and cheap to resume.

Training: iteration i (numbered from 1) draws everything from Generator(Philox(seed + i)): the group
order (`epochs_per_iter` permutations), one puzzle per group, and a random order of that puzzle's
examples. The reference draws the example subsets from numpy's unseeded global RNG, so its batches
cannot be reproduced; we use the seeded generator for every draw and order them so that the whole
iteration's plan (a flat array of example indices, G per global batch) is built with array operations.
Resuming at batch b is then a slice of the plan, not a replay of b batches.

Draw order per set (in `metadata.sets` order), which a plain per-group loop reproduces exactly:
  1. `rng.permutation(num_groups)` once per epoch, concatenated;
  2. one `rng.integers(first_puzzle, end_puzzle)` per group, in that order;
  3. for each group whose chosen puzzle has more than one example, `rng.random(size)` keys; the examples
     are taken in stable-argsort order of the keys.
Batches take k = min(size, G - filled) examples of each group in turn; the rest of a cut-off group is
dropped, as is the final partial batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hrm.data.format import DatasetError, DatasetMetadata, check_arrays, load_split, read_metadata

IGNORE_INDEX = -100
_CHUNK_GROUPS = 1 << 20  # groups per vectorised chunk when expanding the plan (bounds temporary memory)


def total_steps(metadata: DatasetMetadata, epochs: int, global_batch_size: int) -> int:
    """The reference's estimate of optimizer steps for a run (spec §4.5)."""
    return int(epochs * metadata.total_groups * metadata.mean_puzzle_examples / global_batch_size)


def _batch_cuts(sizes: np.ndarray, global_batch_size: int) -> np.ndarray:
    """How many examples each group contributes (0 after the last full batch).

    Walks batches, not groups: each full batch ends at the first group whose running total reaches G.
    """
    take = sizes.copy()
    cum = np.cumsum(sizes)
    base, last = 0, -1
    while True:
        g = int(np.searchsorted(cum, base + global_batch_size, side="left"))
        if g >= len(cum):
            break
        take[g] = base + global_batch_size - (cum[g] - sizes[g])
        base, last = int(cum[g]), g
    take[last + 1:] = 0
    return take


def _expand(rng: np.random.Generator, starts: np.ndarray, sizes: np.ndarray, take: np.ndarray,
            out: np.ndarray) -> None:
    """Write each group's chosen examples (random order, first `take`) into `out`, chunk by chunk."""
    pos = 0
    for a in range(0, len(sizes), _CHUNK_GROUPS):
        sz, st, tk = sizes[a:a + _CHUNK_GROUPS], starts[a:a + _CHUNK_GROUPS], take[a:a + _CHUNK_GROUPS]
        n_keys = sz * (sz > 1)
        keys = rng.random(int(n_keys.sum()))  # drawn even for groups past the last batch: fixed stream
        key_off = np.cumsum(n_keys) - n_keys
        out_off = pos + np.cumsum(tk) - tk
        pos += int(tk.sum())
        ones = (sz == 1) & (tk == 1)
        out[out_off[ones]] = st[ones]
        for s in np.unique(sz[sz > 1]):
            rows = np.flatnonzero((sz == s) & (tk > 0))
            if not len(rows):
                continue
            ar = np.arange(s)
            perm = np.argsort(keys[key_off[rows][:, None] + ar], axis=1, kind="stable")
            chosen = st[rows][:, None] + perm
            full = tk[rows] == s
            out[out_off[rows[full]][:, None] + ar] = chosen[full]
            for r, row in zip(np.flatnonzero(~full), rows[~full]):  # at most one cut group per batch
                k = int(tk[row])
                out[out_off[row]:out_off[row] + k] = chosen[r, :k]


def iteration_plan(rng: np.random.Generator, puzzle_indices: np.ndarray, group_indices: np.ndarray,
                   global_batch_size: int, epochs_per_iter: int) -> np.ndarray:
    """Example indices of one set for one iteration: a multiple of G long, one row per batch slot."""
    num_groups = len(group_indices) - 1
    order = np.empty(num_groups * epochs_per_iter, dtype=np.int64)
    for e in range(epochs_per_iter):
        order[e * num_groups:(e + 1) * num_groups] = rng.permutation(num_groups)
    puzzles = rng.integers(group_indices[order], group_indices[order + 1]) if len(order) else order
    del order
    starts = puzzle_indices[puzzles].astype(np.int64)
    sizes = puzzle_indices[puzzles + 1].astype(np.int64) - starts
    del puzzles
    take = _batch_cuts(sizes, global_batch_size)
    dtype = np.int32 if int(puzzle_indices[-1]) < np.iinfo(np.int32).max else np.int64
    out = np.empty(int(take.sum()), dtype=dtype)
    _expand(rng, starts, sizes, take, out)
    return out


class PuzzleDataset:
    """Batches of one split: `train_iteration` for training, `test_batches` for evaluation.

    Yields (set_name, batch, effective_global_batch_size) with CPU int32 tensors `inputs`, `labels`
    (ignored positions = -100) and `puzzle_identifiers`, B = global_batch_size / world_size rows each.
    """

    def __init__(self, data_path: str | Path, split: str, global_batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, epochs_per_iter: int = 1, test_set_mode: bool = False):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}: check the distributed launch")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size {global_batch_size} must be positive")
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {world_size} ranks: "
                             f"choose a multiple of {world_size}")
        if epochs_per_iter < 1:
            raise ValueError(f"epochs_per_iter {epochs_per_iter} must be at least 1")
        self.split_dir = Path(data_path) / split
        self.metadata = read_metadata(self.split_dir)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epochs_per_iter, self.test_set_mode = epochs_per_iter, test_set_mode
        self._sets: dict[str, dict[str, np.ndarray]] = {}
        for name in self.metadata.sets:
            arrays = load_split(self.split_dir, name)
            errors = check_arrays(arrays, self.metadata, full=False)
            if errors:
                raise DatasetError(f"{self.split_dir} ({name}): {errors[0]}; rebuild the dataset")
            self._sets[name] = arrays
        self._plan_cache: tuple[int, list[tuple[str, np.ndarray]]] | None = None

    # ------------------------------------------------------------------------------------- training
    def _plans(self, iteration: int) -> list[tuple[str, np.ndarray]]:
        if iteration < 1:
            raise ValueError(f"iteration {iteration} must be >= 1 (iterations are numbered from 1)")
        if self._plan_cache is not None and self._plan_cache[0] == iteration:
            return self._plan_cache[1]
        rng = np.random.Generator(np.random.Philox(self.seed + iteration))
        plans = []
        for name, arrays in self._sets.items():
            gidx = arrays["group_indices"]
            empty = np.flatnonzero(np.diff(gidx) == 0)
            if len(empty):
                raise DatasetError(f"{self.split_dir} ({name}): group {int(empty[0])} has no puzzles; "
                                   f"rebuild the dataset")
            plans.append((name, iteration_plan(rng, arrays["puzzle_indices"], gidx,
                                               self.global_batch_size, self.epochs_per_iter)))
        self._plan_cache = (iteration, plans)
        return plans

    def num_train_batches(self, iteration: int) -> int:
        """Full global batches in `iteration` (the final partial batch is dropped)."""
        return sum(len(plan) // self.global_batch_size for _, plan in self._plans(iteration))

    def train_iteration(self, iteration: int, start_batch: int = 0
                        ) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        """This rank's share of every global batch of `iteration`, from batch `start_batch` on."""
        G, B = self.global_batch_size, self.local_batch_size
        plans = self._plans(iteration)
        batch = 0
        for name, plan in plans:
            n = len(plan) // G
            first = max(0, start_batch - batch)
            for b in range(first, n):
                lo = b * G + self.rank * B
                yield name, self._collate(self._sets[name], plan[lo:lo + B]), G
            batch += n

    # ------------------------------------------------------------------------------------- evaluation
    def test_batches(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        """Every example once, in order, in windows of G; short batches are padded to B."""
        G, B = self.global_batch_size, self.local_batch_size
        for name, arrays in self._sets.items():
            total = len(arrays["inputs"])
            for start in range(0, total, G):
                end = min(start + G, total)
                lo = min(start + self.rank * B, end)
                hi = min(lo + B, end)
                yield name, self._collate(arrays, np.arange(lo, hi, dtype=np.int64)), end - start

    # ------------------------------------------------------------------------------------- collation
    def _collate(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, torch.Tensor]:
        meta, B, n = self.metadata, self.local_batch_size, len(rows)
        inputs = np.full((B, meta.seq_len), meta.pad_id, dtype=np.int32)
        labels = np.full((B, meta.seq_len), IGNORE_INDEX, dtype=np.int32)
        ids = np.full(B, meta.blank_identifier_id, dtype=np.int32)
        if n:
            # Any integer dtype on disk (uint8 from our builders, int64 from the reference's Sudoku builder);
            # prepare() has checked that every token fits the vocabulary, so the cast to int32 is exact.
            inputs[:n] = arrays["inputs"][rows].astype(np.int32, copy=False)
            lab = arrays["labels"][rows].astype(np.int32)
            if meta.ignore_label_id is not None:
                lab[lab == meta.ignore_label_id] = IGNORE_INDEX
            labels[:n] = lab
            puzzle = np.searchsorted(arrays["puzzle_indices"], rows, side="right") - 1
            ids[:n] = arrays["puzzle_identifiers"][puzzle]
        return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
                "puzzle_identifiers": torch.from_numpy(ids)}
