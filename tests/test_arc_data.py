"""ARC builder: split rule and counts on the real data, augmentation, translation, EOS, identifiers."""

from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from hrm.data import arc
from hrm.data.arc import ArcTask, build_arc, load_tasks, task_variants
from hrm.data.augment import DIHEDRAL_INVERSE, dihedral, invert_augmentation, parse_augmented_name
from hrm.data.format import DatasetError, load_split

SMALL = {"training": ["6150a2bd", "44f52bb0"], "evaluation": ["66e6c45b", "00576224", "6ea4a07e", "e345f17b"]}


def small_raw(raw: Path, dest: Path) -> Path:
    """A dataset dir like ARC-AGI/data with a handful of real tasks."""
    for sub, names in SMALL.items():
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(raw / "ARC-AGI" / "data" / sub / f"{n}.json", dest / sub / f"{n}.json")
    return dest


def meta(path: Path, split: str) -> dict:
    return json.loads((path / split / "dataset.json").read_text())


def bbox_grid(row: np.ndarray) -> np.ndarray:
    g = row.reshape(30, 30)
    r, c = np.nonzero(g >= 2)
    return g[r.min(): r.max() + 1, c.min(): c.max() + 1] - 2


@pytest.mark.parametrize("preset,train_groups,test_groups,train_examples,test_examples",
                         [("arc1", 960, 400, 3988, 419), ("arc2", 1120, 120, 4667, 167)])
def test_reference_counts_without_augmentation(raw_data, tmp_path, preset, train_groups, test_groups,
                                               train_examples, test_examples):
    dirs = arc.resolve_dataset_dirs(preset, None, str(raw_data))
    out = build_arc(dirs, tmp_path / preset, num_aug=0, workers=2, quiet=True)
    tr, te = meta(out, "train"), meta(out, "test")
    assert (tr["total_groups"], te["total_groups"]) == (train_groups, test_groups)
    assert tr["total_puzzles"] == train_groups and te["total_puzzles"] == test_groups
    assert tr["num_puzzle_identifiers"] == te["num_puzzle_identifiers"] == train_groups + 1
    assert tr["mean_puzzle_examples"] == pytest.approx(train_examples / train_groups)
    assert len(load_split(out / "train")["inputs"]) == train_examples
    assert len(load_split(out / "test")["inputs"]) == test_examples
    assert (tr["seq_len"], tr["vocab_size"], tr["pad_id"], tr["ignore_label_id"]) == (900, 12, 0, 0)
    info = json.loads((out / "build_info.json").read_text())
    assert info["content_sha256"] == tr["content_sha256"] and len(info["content_sha256"]) == 64
    names = json.loads((out / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(names) == train_groups + 1


def test_augmented_build_decodes_back_to_the_tasks(raw_data, tmp_path):
    src = small_raw(raw_data, tmp_path / "raw" / "data")
    out = build_arc([src], tmp_path / "out", num_aug=6, seed=3, workers=1, quiet=True)
    names = json.loads((out / "identifiers.json").read_text())
    tasks = {t.name: t for t in load_tasks([src])[0]}
    train, test = load_split(out / "train"), load_split(out / "test")
    assert meta(out, "train")["total_groups"] == 6 and meta(out, "test")["total_groups"] == 4

    seen_ids = set()
    for split, arrays in (("train", train), ("test", test)):
        gi, pi, pid = arrays["group_indices"], arrays["puzzle_indices"], arrays["puzzle_identifiers"]
        for g in range(len(gi) - 1):
            first = names[pid[gi[g]]]
            assert "_" not in first  # the unaugmented puzzle leads its group
            variants = set()
            for p in range(gi[g], gi[g + 1]):
                task, t, mapping = parse_augmented_name(names[pid[p]])
                assert task == first
                pairs = tasks[task].split_pairs(split)
                assert pi[p + 1] - pi[p] == len(pairs)
                at_origin = 0
                for e, (want_in, want_out) in enumerate(pairs):
                    row_in, row_out = arrays["inputs"][pi[p] + e], arrays["labels"][pi[p] + e]
                    r0, c0 = np.argwhere(row_in.reshape(30, 30) >= 2).min(axis=0)
                    at_origin += (r0, c0) == (0, 0)
                    assert np.array_equal(invert_augmentation(bbox_grid(row_in), t, mapping), want_in)
                    assert np.array_equal(invert_augmentation(bbox_grid(row_out), t, mapping), want_out)
                    # EOS: the row under and the column right of the grid, corner left as PAD.
                    grid = row_out.reshape(30, 30)
                    h, w = bbox_grid(row_out).shape
                    if r0 + h < 30:
                        assert np.all(grid[r0 + h, c0: c0 + w] == 1)
                    if c0 + w < 30:
                        assert np.all(grid[r0: r0 + h, c0 + w] == 1)
                    if r0 + h < 30 and c0 + w < 30:
                        assert grid[r0 + h, c0 + w] == 0
                    eos = (h if c0 + w < 30 else 0) + (w if r0 + h < 30 else 0)
                    assert np.count_nonzero(grid) == h * w + eos
                assert at_origin >= 1 if split == "train" else at_origin == len(pairs)
                variants.add(names[pid[p]])
                seen_ids.add((split, int(pid[p])))
            assert len(variants) == gi[g + 1] - gi[g]
    # Evaluation tasks: test puzzles reuse the identifiers of their train-split puzzles.
    test_ids = {i for s, i in seen_ids if s == "test"}
    assert test_ids <= {i for s, i in seen_ids if s == "train"}
    assert meta(out, "train")["num_puzzle_identifiers"] == len(names) == 1 + len({i for _, i in seen_ids})


def test_build_is_seeded_and_independent_of_workers_and_listing_order(raw_data, tmp_path, monkeypatch):
    src = small_raw(raw_data, tmp_path / "raw" / "data")
    a = build_arc([src], tmp_path / "a", num_aug=5, seed=7, workers=1, quiet=True)
    b = build_arc([src], tmp_path / "b", num_aug=5, seed=7, workers=2, quiet=True)
    real_iterdir, real_glob = pathlib.Path.iterdir, pathlib.Path.glob
    monkeypatch.setattr(pathlib.Path, "iterdir", lambda self: reversed(sorted(real_iterdir(self))))
    monkeypatch.setattr(pathlib.Path, "glob", lambda self, pat: reversed(sorted(real_glob(self, pat))))
    c = build_arc([src], tmp_path / "c", num_aug=5, seed=7, workers=1, quiet=True)
    monkeypatch.undo()
    d = build_arc([src], tmp_path / "d", num_aug=5, seed=8, workers=1, quiet=True)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes() == (c / f).read_bytes(), f
    assert (a / "train/all__inputs.npy").read_bytes() != (d / "train/all__inputs.npy").read_bytes()


def test_dedupe_stops_at_the_distinct_variants():
    # One colour, symmetric shapes: only the colour (9 choices) can change, dihedral transforms cannot.
    one = np.array([[1]], dtype=np.uint8)
    task = ArcTask("mono", "training/mono", "mono.json", False, [(one, one)], [(one, one)])
    ts, maps = task_variants(task, num_aug=50, seed=0)
    assert len(ts) == 9
    assert sorted(int(m[1]) for m in maps) == list(range(1, 10))
    ts, maps = task_variants(task, num_aug=3, seed=0)
    assert len(ts) == 4 and ts[0] == 0 and list(maps[0]) == list(range(10))


def test_dihedral_inverse_table():
    g = np.arange(6).reshape(2, 3)
    for t in range(8):
        assert np.array_equal(dihedral(dihedral(g, t), DIHEDRAL_INVERSE[t]), g)
    assert len({dihedral(np.arange(9).reshape(3, 3), t).tobytes() for t in range(8)}) == 8


def write_task(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


GOOD = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3]], "output": [[4]]}]}


@pytest.mark.parametrize("bad,needle", [
    ({"train": [{"input": [[1, 10]], "output": [[1]]}], "test": []}, "train[0].input holds colour 10"),
    ({"train": [{"input": [[0] * 31], "output": [[1]]}], "test": []}, "train[0].input is 1x31"),
    ({"train": [], "test": [{"input": [[1], [1, 2]], "output": [[1]]}]}, "test[0].input has rows"),
    ({"train": [{"input": [[1]]}], "test": []}, "train[0] needs 'input' and 'output'"),
])
def test_bad_task_files(tmp_path, bad, needle):
    write_task(tmp_path / "d" / "training" / "good.json", GOOD)
    write_task(tmp_path / "d" / "training" / "bad.json", bad)
    with pytest.raises(DatasetError, match="bad.json") as e:
        build_arc([tmp_path / "d"], tmp_path / "out", num_aug=0, workers=1, quiet=True)
    assert needle in str(e.value) and "--skip-bad" in str(e.value)
    assert not (tmp_path / "out").exists()
    out = build_arc([tmp_path / "d"], tmp_path / "out", num_aug=0, workers=1, skip_bad=True, quiet=True)
    assert json.loads((out / "build_info.json").read_text())["skipped_bad_files"] == 1
    assert meta(out, "train")["total_groups"] == 1


def test_output_dir_with_another_dataset_and_disk_space(tmp_path, monkeypatch):
    write_task(tmp_path / "d" / "evaluation" / "t.json", GOOD)
    out = build_arc([tmp_path / "d"], tmp_path / "out", num_aug=2, workers=1, quiet=True)
    build_arc([tmp_path / "d"], out, num_aug=2, workers=1, quiet=True)  # same build: nothing to do
    with pytest.raises(DatasetError, match="already holds a different dataset"):
        build_arc([tmp_path / "d"], out, num_aug=3, workers=1, quiet=True)

    class Usage:
        free = 1000

    monkeypatch.setattr(arc.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(DatasetError, match="not enough disk space"):
        build_arc([tmp_path / "d"], tmp_path / "big", num_aug=2, workers=1, quiet=True)
    assert not (tmp_path / "big").exists()
    assert not list(tmp_path.glob(".big*"))


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build_arc([tmp_path / "nope"], tmp_path / "out", num_aug=0, quiet=True)
