"""Maze builder (byte-exact against the reference's output) and the offline maze generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm.data import maze
from hrm.data.augment import dihedral
from hrm.data.format import DatasetError, load_split


@pytest.fixture(scope="module")
def maze_src(raw_data) -> Path:
    return raw_data / "maze-30x30-hard-1k"


def test_build_matches_reference_byte_for_byte(maze_src, tmp_path):
    out = maze.build_maze(str(maze_src), tmp_path / "maze")
    golden = maze_src / "hrm-built"
    for split in ("train", "test"):  # hrm-built holds both splits, each the CSV in order
        for f in sorted((golden / split).glob("*.npy")):
            assert (out / split / f.name).read_bytes() == f.read_bytes(), f"{split}/{f.name}"
        assert json.loads((out / split / "dataset.json").read_text()) == \
            json.loads((golden / split / "dataset.json").read_text())
    ids = [json.loads((d / "identifiers.json").read_text()) for d in (out, golden)]
    assert ids[0] == ids[1] == ["<blank>"]


def test_rebuild_is_a_no_op_and_other_options_are_refused(maze_src, tmp_path):
    out = maze.build_maze(str(maze_src), tmp_path / "maze", subsample_size=5, seed=1)
    before = (out / "train" / "all__inputs.npy").read_bytes()
    maze.build_maze(str(maze_src), out, subsample_size=5, seed=1)
    assert (out / "train" / "all__inputs.npy").read_bytes() == before
    with pytest.raises(DatasetError, match="already holds a different dataset"):
        maze.build_maze(str(maze_src), out, subsample_size=5, seed=2)


def test_subsample_and_dihedral_augmentation(maze_src, tmp_path):
    out = maze.build_maze(str(maze_src), tmp_path / "maze", subsample_size=4, aug=True, seed=0)
    train, test = load_split(out / "train"), load_split(out / "test")
    assert len(train["inputs"]) == 32 and list(train["group_indices"]) == [0, 8, 16, 24, 32]
    assert len(test["inputs"]) == 1000  # test is never subsampled or augmented
    meta = json.loads((out / "train" / "dataset.json").read_text())
    assert meta["total_groups"] == 4 and meta["total_puzzles"] == 32
    for g in range(4):
        base = np.asarray(train["labels"][8 * g]).reshape(30, 30)
        for t in range(8):
            assert np.array_equal(train["labels"][8 * g + t].reshape(30, 30), dihedral(base, t))


def test_tie_break_reproduces_official_labels(maze_src):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        q, a, _ = maze.read_maze_csv(maze_src / f"{split}.csv")
        rows = rng.choice(len(q), 150, replace=False)
        assert np.array_equal(maze.solve_questions(q[rows]), a[rows])


def test_generated_mazes_meet_the_constraints(tmp_path):
    out = maze.generate_maze_csvs(tmp_path / "gen", count=12, test_count=6, seed=5)
    q_tr, a_tr, _ = maze.read_maze_csv(out / "train.csv")
    q_te, a_te, _ = maze.read_maze_csv(out / "test.csv")
    assert (len(q_tr), len(q_te)) == (12, 6)
    q, a = np.concatenate([q_tr, q_te]), np.concatenate([a_tr, a_te])
    assert q.shape[1] == 900
    assert len({r.tobytes() for r in q}) == 18  # no duplicates, train and test disjoint
    assert np.all((q == ord("S")).sum(1) == 1) and np.all((q == ord("G")).sum(1) == 1)
    assert not np.any(q == ord("o"))
    path = a == ord("o")
    assert np.all(path.sum(1) >= maze.MIN_PATH_CELLS)
    assert np.all(np.where(path, ord(" "), a) == q)  # the answer only marks open cells
    walls = (q == ord("#")).mean()
    assert 0.3 < walls < 0.45
    # The path is a shortest one: its cell count is the S->G distance minus one.
    grids = q.reshape(-1, 30, 30)
    starts, goals = np.argwhere(grids == ord("S"))[:, 1:], np.argwhere(grids == ord("G"))[:, 1:]
    dist = maze.bfs_distances(grids != ord("#"), starts)
    assert np.array_equal(dist[np.arange(18), goals[:, 0], goals[:, 1]], path.sum(1) + 1)
    # ... and the official tie-break one; the same seed gives the same files.
    assert np.array_equal(maze.solve_questions(q), a)
    again = maze.generate_maze_csvs(tmp_path / "gen2", count=12, test_count=6, seed=5)
    assert (again / "train.csv").read_bytes() == (out / "train.csv").read_bytes()
    # The generated CSVs build like the official ones.
    built = maze.build_maze(str(out), tmp_path / "built")
    assert len(load_split(built / "test")["inputs"]) == 6


def test_generate_refuses_to_overwrite_other_mazes(tmp_path):
    maze.generate_maze_csvs(tmp_path, count=2, seed=0)
    with pytest.raises(DatasetError, match="already exists with other mazes"):
        maze.generate_maze_csvs(tmp_path, count=2, seed=1)


def _csv(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = ['"source","question","answer","rating"'] + [f'"","{q}","{a}",""' for q, a in rows]
    path.write_text("\n".join(lines) + "\n")


def test_bad_rows_name_file_and_line(maze_src, tmp_path):
    q, a, _ = maze.read_maze_csv(maze_src / "test.csv")
    good = [(q[i].tobytes().decode(), a[i].tobytes().decode()) for i in range(3)]
    src = tmp_path / "src"
    src.mkdir()
    _csv(src / "train.csv", [good[0], (good[1][0][:-1], good[1][1][:-1]), good[2]])
    _csv(src / "test.csv", [good[0], (good[1][0].replace(" ", "x", 1), good[1][1])])
    with pytest.raises(DatasetError, match=r"train\.csv line 3: question has 899 characters.*--skip-bad"):
        maze.build_maze(str(src), tmp_path / "out")
    with pytest.raises(DatasetError, match=r"test\.csv line 3: question holds 'x'"):
        maze.read_maze_csv(src / "test.csv")
    out = maze.build_maze(str(src), tmp_path / "out", skip_bad=True)
    assert json.loads((out / "build_info.json").read_text())["skipped_bad_rows"] == 2
    assert len(load_split(out / "train")["inputs"]) == 2 and len(load_split(out / "test")["inputs"]) == 1


def test_missing_source_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        maze.build_maze(str(tmp_path / "nowhere"), tmp_path / "out")


def test_cli_generate_and_build(tmp_path, capsys):
    from hrm.data.cli import main

    assert main(["generate", "maze", "--count", "3", "--test-count", "2", "--seed", "1",
                 "--output-dir", str(tmp_path / "csv")]) == 0
    build = ["build", "maze", "--source", str(tmp_path / "csv"), "--output-dir", str(tmp_path / "ds")]
    assert main(build) == 0
    assert main(build + ["--aug"]) == 2
    assert "already holds a different dataset" in capsys.readouterr().err
