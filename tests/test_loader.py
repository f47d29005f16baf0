"""PuzzleDataset: the vectorised plan equals a plain per-group loop; sharding, resume, test mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm.data import format as format_module
from hrm.data import loader
from hrm.data.format import DatasetError, DatasetMetadata, check_arrays, validate_dataset, write_split
from hrm.data.loader import PuzzleDataset, iteration_plan, total_steps


def slow_plan(rng, puzzle_indices, group_indices, G, epochs):
    """The specification of the sampling, one group at a time (see loader's docstring for draw order)."""
    n = len(group_indices) - 1
    order = [int(g) for _ in range(epochs) for g in rng.permutation(n)]
    puzzles = [int(rng.integers(group_indices[g], group_indices[g + 1])) for g in order]
    chosen = []
    for p in puzzles:
        start, size = int(puzzle_indices[p]), int(puzzle_indices[p + 1] - puzzle_indices[p])
        perm = np.argsort(rng.random(size), kind="stable") if size > 1 else np.arange(size)
        chosen.append([start + int(i) for i in perm])
    out, batch = [], []
    for examples in chosen:
        k = min(len(examples), G - len(batch))
        batch.extend(examples[:k])
        if len(batch) == G:
            out.extend(batch)
            batch = []
    return np.array(out, dtype=np.int64)


def random_structure(seed, num_groups, max_puzzles=3, max_examples=6, allow_empty=True):
    r = np.random.default_rng(seed)
    puzzles_per_group = r.integers(1, max_puzzles + 1, num_groups)
    group_indices = np.concatenate([[0], np.cumsum(puzzles_per_group)]).astype(np.int32)
    sizes = r.integers(0 if allow_empty else 1, max_examples + 1, int(group_indices[-1]))
    puzzle_indices = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return puzzle_indices, group_indices


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("G,epochs", [(1, 1), (7, 1), (16, 3), (40, 2), (10_000, 1)])
def test_plan_matches_per_group_loop(seed, G, epochs, monkeypatch):
    monkeypatch.setattr(loader, "_CHUNK_GROUPS", 5)  # exercise the chunked expansion too
    pidx, gidx = random_structure(seed, num_groups=13 + seed)
    fast = iteration_plan(np.random.Generator(np.random.Philox(seed)), pidx, gidx, G, epochs)
    slow = slow_plan(np.random.Generator(np.random.Philox(seed)), pidx, gidx, G, epochs)
    assert len(fast) % G == 0
    np.testing.assert_array_equal(fast, slow)


def test_plan_sudoku_like_visits_every_group_once_per_epoch():
    n, epochs, G = 100, 6, 50  # 600 examples = 12 full batches, nothing dropped
    pidx, gidx = np.arange(n + 1, dtype=np.int32), np.arange(n + 1, dtype=np.int32)
    plan = iteration_plan(np.random.Generator(np.random.Philox(3)), pidx, gidx, G, epochs)
    assert np.bincount(plan, minlength=n).tolist() == [epochs] * n
    for e in range(epochs):  # each epoch is a permutation of all groups
        assert sorted(plan[e * n:(e + 1) * n].tolist()) == list(range(n))


def make_dataset(path, pidx, gidx, seq_len=5, ignore_label_id=0, num_ids=7, split="train"):
    n = int(pidx[-1])
    r = np.random.default_rng(0)
    inputs = r.integers(1, 11, (n, seq_len)).astype(np.uint8)
    labels = r.integers(0, 11, (n, seq_len)).astype(np.uint8)
    ids = r.integers(1, num_ids, len(pidx) - 1).astype(np.int32)
    meta = DatasetMetadata(pad_id=0, ignore_label_id=ignore_label_id, blank_identifier_id=0, vocab_size=11,
                           seq_len=seq_len, num_puzzle_identifiers=num_ids, total_groups=len(gidx) - 1,
                           mean_puzzle_examples=n / (len(pidx) - 1))
    write_split(path / split, meta, {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids,
                                     "puzzle_indices": pidx, "group_indices": gidx})
    return inputs, labels, ids


def expected_rows(rows, inputs, labels, ids, pidx, B, ignore=0):
    """What a collated batch must hold for example `rows` (padded to B)."""
    n = len(rows)
    exp_in = np.zeros((B, inputs.shape[1]), np.int32)
    exp_lab = np.full((B, inputs.shape[1]), -100, np.int32)
    exp_ids = np.zeros(B, np.int32)
    exp_in[:n] = inputs[rows]
    lab = labels[rows].astype(np.int32)
    lab[lab == ignore] = -100
    exp_lab[:n] = lab
    owner = [int(np.flatnonzero((pidx[:-1] <= e) & (pidx[1:] > e))[0]) for e in rows]
    exp_ids[:n] = ids[owner]
    return exp_in, exp_lab, exp_ids


def test_train_batches_sharded_and_collated(tmp_path):
    pidx, gidx = random_structure(1, num_groups=30)
    inputs, labels, ids = make_dataset(tmp_path, pidx, gidx)
    G, W, it = 12, 3, 2
    plan = iteration_plan(np.random.Generator(np.random.Philox(5 + it)), pidx, gidx, G, 4)
    per_rank = [list(PuzzleDataset(tmp_path, "train", G, rank=r, world_size=W, seed=5, epochs_per_iter=4)
                     .train_iteration(it)) for r in range(W)]
    ds = PuzzleDataset(tmp_path, "train", G, world_size=W, seed=5, epochs_per_iter=4)
    assert ds.num_train_batches(it) == len(plan) // G == len(per_rank[0]) > 0
    for b in range(len(plan) // G):
        for r in range(W):
            name, batch, eff = per_rank[r][b]
            assert (name, eff) == ("all", G)
            assert all(t.dtype == torch.int32 for t in batch.values())
            rows = plan[b * G + r * 4:b * G + (r + 1) * 4]
            exp_in, exp_lab, exp_ids = expected_rows(rows, inputs, labels, ids, pidx, 4)
            np.testing.assert_array_equal(batch["inputs"].numpy(), exp_in)
            np.testing.assert_array_equal(batch["labels"].numpy(), exp_lab)
            np.testing.assert_array_equal(batch["puzzle_identifiers"].numpy(), exp_ids)


def _as_lists(batches):
    return [(n, {k: v.tolist() for k, v in b.items()}, e) for n, b, e in batches]


def test_resume_and_determinism(tmp_path):
    pidx, gidx = random_structure(2, num_groups=25, allow_empty=False)
    make_dataset(tmp_path, pidx, gidx)
    ds = PuzzleDataset(tmp_path, "train", 8, seed=1, epochs_per_iter=3)
    full = _as_lists(ds.train_iteration(1))
    assert len(full) == ds.num_train_batches(1) > 5
    fresh = PuzzleDataset(tmp_path, "train", 8, seed=1, epochs_per_iter=3)  # resumed job: new process
    assert _as_lists(fresh.train_iteration(1, start_batch=4)) == full[4:]
    assert _as_lists(fresh.train_iteration(1, start_batch=len(full))) == []
    assert _as_lists(ds.train_iteration(2)) != full
    other_seed = PuzzleDataset(tmp_path, "train", 8, seed=2, epochs_per_iter=3)
    assert _as_lists(other_seed.train_iteration(1)) != full


def test_test_mode_covers_every_example_once(tmp_path):
    pidx, gidx = random_structure(3, num_groups=20)
    inputs, labels, ids = make_dataset(tmp_path, pidx, gidx, split="test")
    n, G, W = int(pidx[-1]), 20, 4
    B = G // W
    assert 0 < n % G <= 3 * B  # the last window leaves some rank without real rows
    seen = []
    for r in range(W):
        ds = PuzzleDataset(tmp_path, "test", G, rank=r, world_size=W, test_set_mode=True)
        batches = list(ds.test_batches())
        assert len(batches) == -(-n // G)
        for w, (_, batch, eff) in enumerate(batches):
            start, end = w * G, min(w * G + G, n)
            assert eff == end - start
            rows = np.arange(min(start + r * B, end), min(start + (r + 1) * B, end))
            exp_in, exp_lab, exp_ids = expected_rows(rows, inputs, labels, ids, pidx, B)
            np.testing.assert_array_equal(batch["inputs"].numpy(), exp_in)
            np.testing.assert_array_equal(batch["labels"].numpy(), exp_lab)
            np.testing.assert_array_equal(batch["puzzle_identifiers"].numpy(), exp_ids)
            seen.extend(rows.tolist())
    assert sorted(seen) == list(range(n))


def test_ignore_label_none_keeps_zero_labels(tmp_path):
    pidx, gidx = np.arange(5, dtype=np.int32), np.arange(5, dtype=np.int32)
    _, labels, _ = make_dataset(tmp_path, pidx, gidx, ignore_label_id=None, split="test")
    ds = PuzzleDataset(tmp_path, "test", 4, test_set_mode=True)
    (_, batch, _), = list(ds.test_batches())
    np.testing.assert_array_equal(batch["labels"].numpy(), labels.astype(np.int32))


def test_bad_arguments(tmp_path):
    pidx, gidx = random_structure(4, num_groups=5)
    make_dataset(tmp_path, pidx, gidx)
    msg = "^global_batch_size 770 is not divisible by 4 ranks: choose a multiple of 4$"
    with pytest.raises(ValueError, match=msg):
        PuzzleDataset(tmp_path, "train", 770, world_size=4)
    with pytest.raises(ValueError, match="iteration 0 must be >= 1"):
        PuzzleDataset(tmp_path, "train", 4).num_train_batches(0)
    with pytest.raises(DatasetError, match="dataset.json not found"):
        PuzzleDataset(tmp_path, "test", 4)


def test_total_steps_matches_reference_examples():
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
                           num_puzzle_identifiers=1, total_groups=1000, mean_puzzle_examples=1.0)
    assert total_steps(meta, 20000, 768) == 26041
    meta.total_groups, meta.mean_puzzle_examples = 960, 4.14544
    assert total_steps(meta, 100000, 768) == int(100000 * 960 * 4.14544 / 768)


def _write_raw(split_dir, arrays, meta):
    """A split written the way the reference's builders do it: plain np.save of whatever dtype they hold."""
    import json
    from dataclasses import asdict

    split_dir.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        np.save(split_dir / f"all__{name}.npy", a)
    (split_dir / "dataset.json").write_text(json.dumps(asdict(meta)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint16])
def test_any_integer_token_dtype_collates_like_uint8(tmp_path, dtype):
    """The reference's augmented Sudoku builder writes int64 inputs/labels: same batches as uint8 ones."""
    pidx, gidx = random_structure(5, num_groups=12, allow_empty=False)
    inputs, labels, ids = make_dataset(tmp_path / "u8", pidx, gidx)
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=5,
                           num_puzzle_identifiers=7, total_groups=len(gidx) - 1,
                           mean_puzzle_examples=int(pidx[-1]) / (len(pidx) - 1))
    _write_raw(tmp_path / "wide" / "train", {"inputs": inputs.astype(dtype), "labels": labels.astype(dtype),
                                             "puzzle_identifiers": ids.astype(np.int64), "puzzle_indices": pidx,
                                             "group_indices": gidx}, meta)
    validate_dataset(tmp_path / "wide", splits=("train",), full=True)
    narrow = PuzzleDataset(tmp_path / "u8", "train", 6, seed=4, epochs_per_iter=2)
    wide = PuzzleDataset(tmp_path / "wide", "train", 6, seed=4, epochs_per_iter=2)
    assert wide._sets["all"]["inputs"].dtype == dtype
    got = list(wide.train_iteration(1))
    assert _as_lists(got) == _as_lists(narrow.train_iteration(1)) and got
    assert all(t.dtype == torch.int32 for _, b, _ in got for t in b.values())


def _token_meta(ignore=0):
    return DatasetMetadata(pad_id=0, ignore_label_id=ignore, blank_identifier_id=0, vocab_size=11, seq_len=4,
                           num_puzzle_identifiers=1, total_groups=3, mean_puzzle_examples=1.0)


def _token_arrays(inputs, labels):
    n = len(inputs)
    return {"inputs": np.asarray(inputs), "labels": np.asarray(labels), "puzzle_identifiers": np.zeros(n, np.int32),
            "puzzle_indices": np.arange(n + 1, dtype=np.int32), "group_indices": np.arange(n + 1, dtype=np.int32)}


@pytest.mark.parametrize("field,value,dtype,problem", [
    ("inputs", 11, np.int64, "inputs hold token 11 >= vocab_size 11"),
    ("labels", 300, np.int64, "labels hold token 300 >= vocab_size 11"),
    ("inputs", -2, np.int64, "inputs hold negative token -2"),
    ("inputs", 255, np.uint8, "inputs hold token 255 >= vocab_size 11"),
    ("labels", 1.0, np.float32, "labels has dtype float32, expected an integer dtype"),
])
def test_bad_tokens_and_dtypes_name_the_file(tmp_path, field, value, dtype, problem):
    good = np.full((3, 4), 5, dtype=np.int64)
    arrays = _token_arrays(good.copy(), good.copy())
    arrays[field] = arrays[field].astype(dtype)
    arrays[field][2, 1] = value
    _write_raw(tmp_path / "d" / "train", arrays, _token_meta())
    assert check_arrays(arrays, _token_meta(), full=True) == [problem]
    with pytest.raises(DatasetError) as e:
        validate_dataset(tmp_path / "d", splits=("train",), full=True)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'd' / 'train' / f'all__{field}.npy'}: {problem}; rebuild the dataset")
    assert "\n" not in msg


def test_labels_may_hold_an_out_of_vocab_ignore_label_id():
    labels = np.array([[1, -100, 3, 10]] * 3, dtype=np.int64)
    assert check_arrays(_token_arrays(np.ones((3, 4), np.int64), labels), _token_meta(ignore=-100)) == []
    labels[1, 0] = -7
    assert check_arrays(_token_arrays(np.ones((3, 4), np.int64), labels), _token_meta(ignore=-100)) == [
        "labels hold negative token -7"]
    assert check_arrays(_token_arrays(np.ones((3, 4), np.int64), labels), _token_meta(ignore=0)) == [
        "labels hold negative token -100"]


def test_token_range_scans_in_slices(monkeypatch):
    monkeypatch.setattr(format_module, "_SCAN_ELEMENTS", 7)  # many slices of one row (seq_len 5)
    a = np.random.default_rng(1).integers(-50, 90, size=(23, 5))
    assert format_module.token_range(a) == (int(a.min()), int(a.max()))
    assert format_module.token_range(a, exclude=int(a.max())) == (int(a.min()), int(a[a != a.max()].max()))
    assert format_module.token_range(np.zeros((0, 5), np.int64)) is None
    assert format_module.token_range(np.full((3, 5), 4), exclude=4) is None
