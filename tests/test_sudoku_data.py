"""Raw-data sources, the Sudoku builder (golden output from the reference) and the puzzle generator."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hrm.data import sources, sudoku, sudoku_solver
from hrm.data.cli import main as hrm_data
from hrm.data.format import DatasetError, load_split, read_metadata, validate_dataset

# --------------------------------------------------------------------------------------------- sources


def test_resolve_local_folder(tmp_path):
    (tmp_path / "train.csv").write_text("x\n")
    (tmp_path / "test.csv").write_text("x\n")
    assert sources.resolve_csv_source(str(tmp_path)) == tmp_path


def test_resolve_local_folder_missing_file(tmp_path):
    (tmp_path / "train.csv").write_text("x\n")
    with pytest.raises(DatasetError, match=r"test\.csv not found"):
        sources.resolve_csv_source(str(tmp_path))


def test_resolve_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        sources.resolve_csv_source(str(tmp_path / "nope"))


def test_resolve_hub_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert sources.hub_reachable(0.5) is False
    with pytest.raises(DatasetError, match="no internet.*--source DIR.*hrm-data generate"):
        sources.resolve_csv_source("someone/some-dataset", timeout_s=0.5)


def test_resolve_hub_download_paths(monkeypatch, tmp_path):
    """The hub branch without the network: a fake hf_hub_download (success, then a dropped connection)."""
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    calls = []

    def fake_download(repo_id, filename, repo_type, etag_timeout, local_files_only):
        calls.append((repo_id, filename, repo_type, local_files_only))
        (snapshot / filename).write_text("x\n")
        return str(snapshot / filename)

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout_s=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert sources.resolve_csv_source("owner/data") == snapshot
    assert calls == [("owner/data", name, "dataset", False) for name in ("train.csv", "test.csv")]

    def dropped(*args, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", dropped)
    with pytest.raises(DatasetError, match="no internet: could not download owner/data/train.csv"):
        sources.resolve_csv_source("owner/data")
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        sources.resolve_csv_source(str(tmp_path / "file.csv"))


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def origin(tmp_path) -> tuple[Path, list[str]]:
    repo = tmp_path / "origin"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    commits = []
    for i in range(2):
        (repo / "f.txt").write_text(f"v{i}\n")
        _git("add", "f.txt", cwd=repo)
        _git("commit", "-q", "-m", f"c{i}", cwd=repo)
        commits.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                      text=True, check=True).stdout.strip())
    return repo, commits


def test_git_checkout_clone_and_reuse(origin, tmp_path):
    repo, (first, second) = origin
    dest = tmp_path / "clones" / "r"
    assert sources.git_checkout(str(repo), first[:10], dest) == dest
    assert (dest / "f.txt").read_text() == "v0\n"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    sources.git_checkout(str(repo), second, dest)  # reuse the clone, move to another commit
    assert (dest / "f.txt").read_text() == "v1\n"
    sources.git_checkout(str(repo), second, dest)  # already there: no-op
    assert (dest / "f.txt").read_text() == "v1\n"


def test_git_checkout_errors(origin, tmp_path):
    repo, _ = origin
    with pytest.raises(DatasetError, match="commit 0123456789abcdef not found"):
        sources.git_checkout(str(repo), "0123456789abcdef", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(DatasetError, match="git clone .* failed"):
        sources.git_checkout(str(tmp_path / "missing-repo"), "abc", tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(DatasetError, match="not a git clone"):
        sources.git_checkout(str(repo), "abc", tmp_path / "c")


# --------------------------------------------------------------------------------------------- builder
HEADER = "source,question,answer,rating\n"


def brute_force_count(grid, limit=2):
    """Plain backtracking (no bitmasks, no propagation): an independent check of the solver."""
    g = list(grid)

    def options(c):
        r, k = divmod(c, 9)
        used = {g[r * 9 + j] for j in range(9)} | {g[i * 9 + k] for i in range(9)}
        used |= {g[(r // 3 * 3 + i) * 9 + k // 3 * 3 + j] for i in range(3) for j in range(3)}
        return [d for d in range(1, 10) if d not in used]

    def count():
        blanks = [c for c in range(81) if not g[c]]
        if not blanks:
            return 1
        cell = min(blanks, key=lambda c: len(options(c)))
        found = 0
        for d in options(cell):
            g[cell] = d
            found += count()
            g[cell] = 0
            if found >= limit:
                break
        return found

    return count()


def is_valid_solution(grid81) -> bool:
    g = np.asarray(grid81).reshape(9, 9)
    boxes = g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    return all(sorted(u) == list(range(1, 10)) for part in (g, g.T, boxes) for u in part.tolist())


@pytest.fixture
def source_dir(raw_data, tmp_path) -> Path:
    """train.csv = the 1k official rows; test.csv = the first 200 stand-in rows."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.csv").symlink_to(raw_data / "sudoku-extreme" / "train.csv")
    lines = (raw_data / "sudoku-extreme" / "test_standin_tdoku.csv").read_text().splitlines(keepends=True)
    (src / "test.csv").write_text("".join(lines[:201]))
    return src


def test_build_matches_reference_golden_output(source_dir, raw_data, tmp_path):
    out = tmp_path / "out"
    summary = sudoku.build(str(source_dir), out)
    assert summary["train"] == {"groups": 1000, "puzzles": 1000} and summary["test"]["puzzles"] == 200
    golden = raw_data / "sudoku-extreme" / "hrm-built-train-1k" / "train"
    for name in ("inputs", "labels"):  # byte for byte, .npy header included
        assert (out / "train" / f"all__{name}.npy").read_bytes() == (golden / f"all__{name}.npy").read_bytes()
    for name in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
        ours, ref = np.load(out / "train" / f"all__{name}.npy"), np.load(golden / f"all__{name}.npy")
        assert ours.dtype == ref.dtype
        np.testing.assert_array_equal(ours, ref)
    meta = json.loads((out / "train" / "dataset.json").read_text())
    assert meta == {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 11,
                    "seq_len": 81, "num_puzzle_identifiers": 1, "total_groups": 1000,
                    "mean_puzzle_examples": 1.0, "sets": ["all"]}
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]
    assert read_metadata(out / "test").total_groups == 200
    validate_dataset(out, full=True)


def test_build_is_idempotent_and_refuses_a_different_build(source_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["build", "sudoku", "--source", str(source_dir), "--output-dir", str(out)]
    assert hrm_data(args) == 0
    stamp = (out / "train" / "all__inputs.npy").stat().st_mtime_ns
    assert hrm_data(args) == 0
    assert "already built, skipping" in capsys.readouterr().out
    assert (out / "train" / "all__inputs.npy").stat().st_mtime_ns == stamp
    assert hrm_data([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hrm-data: error:") and "already holds a different dataset" in err
    assert "\n" not in err


def _build_aug(source_dir, out, **kw):
    kw = {"subsample_size": 20, "num_aug": 7, "seed": 5} | kw
    sudoku.build(str(source_dir), out, **kw)
    return load_split(out / "train", mmap=False)


def test_augmentation_valid_structured_and_seeded(source_dir, tmp_path, monkeypatch):
    a = _build_aug(source_dir, tmp_path / "a")
    n, per = 20, 8
    assert a["inputs"].shape == (n * per, 81)
    np.testing.assert_array_equal(a["group_indices"], np.arange(0, n * per + 1, per))
    np.testing.assert_array_equal(a["puzzle_indices"], np.arange(n * per + 1))
    assert not a["puzzle_identifiers"].any()
    # the subsample: 20 distinct train rows, unaugmented first puzzle of each group, in CSV order
    train = sudoku.read_sudoku_csv(source_dir / "train.csv")
    originals = a["inputs"][::per].astype(int) - 1
    matches = [int(np.flatnonzero((train.questions == q).all(axis=1))[0]) for q in originals]
    assert matches == sorted(set(matches))
    np.testing.assert_array_equal(a["labels"][::per].astype(int) - 1, train.answers[matches])
    for i in range(n * per):
        puzzle, solution = a["inputs"][i].astype(int) - 1, a["labels"][i].astype(int) - 1
        assert is_valid_solution(solution)
        assert ((puzzle == 0) | (puzzle == solution)).all()
        assert (puzzle > 0).sum() == (originals[i // per] > 0).sum()
    assert len({a["inputs"][i].tobytes() for i in range(n * per)}) == n * per  # the copies differ
    # seeded: same seed, any chunk size -> identical; another seed -> different
    monkeypatch.setattr(sudoku, "CHUNK_COPIES", 3)
    b = _build_aug(source_dir, tmp_path / "b")
    c = _build_aug(source_dir, tmp_path / "c", seed=6)
    for name in ("inputs", "labels"):
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])
    assert len(load_split(tmp_path / "a" / "test")["inputs"]) == 200  # test: no subsample, no augmentation


def test_augmentation_index_follows_the_spec():
    """new cell (i, j) = old (row_perm[i], col_perm[j]) of the optionally transposed grid, bands kept."""
    codes = np.random.default_rng(0).integers(0, sudoku.NUM_TRANSFORMS, 2000)
    index, token_map = sudoku.augmentation_indices(codes)
    transposed = []
    for idx in index.reshape(-1, 9, 9):
        rows, cols = idx // 9, idx % 9
        t = bool((rows == rows[:1]).all())  # transposed: the old row varies along the new column
        transposed.append(t)
        if t:
            rows, cols = cols, rows
        row_perm, col_perm = rows[:, 0], cols[0]
        assert (rows == row_perm[:, None]).all() and (cols == col_perm[None, :]).all()
        for perm in (row_perm, col_perm):
            assert sorted(perm.tolist()) == list(range(9))
            assert all(len(set(perm[3 * b:3 * b + 3] // 3)) == 1 for b in range(3))  # a band stays a band
    assert 0.4 < np.mean(transposed) < 0.6
    assert (token_map[:, 0] == 1).all()
    assert all(sorted(m[1:].tolist()) == list(range(2, 11)) for m in token_map)
    powers = 10 ** np.arange(9, dtype=np.int64)
    assert len(np.unique(sudoku.LINE_PERMS @ powers)) == 1296
    assert (np.sort(sudoku.DIGIT_PERMS, axis=1) == np.arange(9)).all()
    assert len(np.unique(sudoku.DIGIT_PERMS.astype(np.int64) @ powers)) == 362880


def test_filters(source_dir, tmp_path):
    rows = sudoku.read_sudoku_csv(source_dir / "train.csv")
    ratings = rows.ratings
    summary = sudoku.build(str(source_dir), tmp_path / "o", min_difficulty=20, subsample_size=5000)
    assert summary["train"]["groups"] == int((ratings >= 20).sum())
    test_ratings = sudoku.read_sudoku_csv(source_dir / "test.csv").ratings
    assert summary["test"]["groups"] == int((test_ratings >= 20).sum())


GOOD_Q = "...7.2..5....95.8.19..8..67..4...6....79...2.26...1......5......39.....8....784.."
GOOD_A = "846712935372695184195483267984237651517964823263851749728549316439126578651378492"


@pytest.mark.parametrize("row,message", [
    (f"x,{GOOD_Q[:-1]},{GOOD_A},1", "line 3: question has 80 characters, expected 81"),
    (f"x,{GOOD_Q},{GOOD_A},1,extra", "line 3: 5 fields, expected 4"),
    (f"x,{GOOD_Q[:-1]}x,{GOOD_A},1", "line 3: question holds a character other than"),
    (f"x,{GOOD_Q},{GOOD_A[:-1]}0,1", "line 3: answer holds a character other than 1-9"),
    (f"x,{GOOD_Q},{GOOD_A[1:]}{GOOD_A[0]},1", "line 3: answer row 1 does not hold each digit 1-9 once"),
    (f"x,{GOOD_Q},{GOOD_A[9:18]}{GOOD_A[:9]}{GOOD_A[18:]},1",  # rows 1 and 2 swapped: valid, contradicts
     "line 3: answer contradicts the question at row 1 column 4"),
])
def test_bad_rows(tmp_path, row, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.csv").write_text(f"{HEADER}x,{GOOD_Q},{GOOD_A},1\n{row}\nx,{GOOD_Q},{GOOD_A},1\n")
    (src / "test.csv").write_text(f"{HEADER}x,{GOOD_Q},{GOOD_A},1\n")
    with pytest.raises(DatasetError, match=f"train.csv {message}.*--skip-bad") as err:
        sudoku.build(str(src), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-built
    summary = sudoku.build(str(src), tmp_path / "out", skip_bad=True)
    assert summary["skipped"] == {"train.csv": 1, "test.csv": 0} and summary["train"]["groups"] == 2


def test_not_a_sudoku_csv(tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    (tmp_path / "test.csv").write_text(HEADER)
    with pytest.raises(DatasetError, match="does not start with the header"):
        sudoku.build(str(tmp_path), tmp_path / "out")


# ------------------------------------------------------------------------------------------- generator

def test_generate_unique_puzzles_and_build(tmp_path, capsys):
    out = tmp_path / "gen"
    assert hrm_data(["generate", "sudoku", "--count", "12", "--test-count", "4", "--seed", "3",
                     "--output-dir", str(out)]) == 0
    rows = {}
    for name, n in (("train.csv", 12), ("test.csv", 4)):
        lines = (out / name).read_text().splitlines()
        assert lines[0] == HEADER.strip() and len(lines) == n + 1
        rows[name] = [line.split(",") for line in lines[1:]]
    questions = [r[1] for rs in rows.values() for r in rs]
    assert len(set(questions)) == 16  # train and test disjoint
    for source, q, a, rating in rows["train.csv"] + rows["test.csv"]:
        assert source == "generated" and int(rating) >= 0
        grid = [0 if ch == "." else int(ch) for ch in q]
        solution = [int(ch) for ch in a]
        assert is_valid_solution(solution) and all(g in (0, s) for g, s in zip(grid, solution))
        assert 17 <= sum(1 for g in grid if g) <= 30
    for _, q, _, _ in rows["test.csv"]:  # independent check of uniqueness on a few
        assert brute_force_count([0 if ch == "." else int(ch) for ch in q]) == 1
    summary = sudoku.build(str(out), tmp_path / "built", num_aug=2)
    assert summary["train"] == {"groups": 12, "puzzles": 36}
    # deterministic
    again = sudoku.generate(tmp_path / "gen2", 12, seed=3, test_count=4)
    assert (again / "train.csv").read_text() == (out / "train.csv").read_text()


def test_generate_blanks_sets_the_difficulty(tmp_path):
    out = tmp_path / "easy"
    assert hrm_data(["generate", "sudoku", "--count", "6", "--test-count", "3", "--seed", "1", "--blanks", "7",
                     "--output-dir", str(out)]) == 0
    for name in ("train.csv", "test.csv"):
        for line in (out / name).read_text().splitlines()[1:]:
            _, q, a, _ = line.split(",")
            assert q.count(".") == 7
            grid = [0 if ch == "." else int(ch) for ch in q]
            assert brute_force_count(grid) == 1 and all(g in (0, int(s)) for g, s in zip(grid, a))
    for bad in ("0", "65"):
        with pytest.raises(DatasetError, match=f"--blanks {bad} is out of range: use 1..64"):
            sudoku.generate(tmp_path / f"bad{bad}", 3, blanks=int(bad))
    assert not (tmp_path / "bad0").exists()


def test_build_from_generated_puzzles_is_offline_and_seeded(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("source=generated must not touch the network")

    monkeypatch.setattr(sources, "hub_reachable", no_network)
    summary = sudoku.build("generated", tmp_path / "demo", subsample_size=8, num_aug=1, seed=2, blanks=5)
    assert summary["train"] == {"groups": 8, "puzzles": 16} and summary["test"]["groups"] == 200
    test = load_split(tmp_path / "demo" / "test")
    assert ((np.asarray(test["inputs"]) == 1).sum(axis=1) == 5).all()  # token 1 is a blank cell
    validate_dataset(tmp_path / "demo", full=True)
    assert sudoku.build("generated", tmp_path / "demo", subsample_size=8, num_aug=1, seed=2, blanks=5) is None
    again = sudoku.build("generated", tmp_path / "again", subsample_size=8, num_aug=1, seed=2, blanks=5)
    assert again == {**summary, "output_dir": str(tmp_path / "again")}
    for split in ("train", "test"):
        assert (np.asarray(load_split(tmp_path / "again" / split)["inputs"]) ==
                np.asarray(load_split(tmp_path / "demo" / split)["inputs"])).all()
    with pytest.raises(DatasetError, match="--blanks 5 applies to generated puzzles only: add --source generated"):
        sudoku.build(str(tmp_path), tmp_path / "nope", blanks=5)


def test_solver_counts_and_rates(tmp_path):
    grid = [0 if ch == "." else int(ch) for ch in GOOD_Q]
    result = sudoku_solver.solve(grid, limit=2)
    assert result.count == 1 and sudoku_solver.to_string(result.solution) == GOOD_A
    assert result.guesses >= 0
    loose = grid[:]
    for c in range(81):
        if loose[c]:
            loose[c] = 0  # drop clues until the solution is no longer unique
            if brute_force_count(loose) > 1:
                break
    assert sudoku_solver.count_solutions(loose) == 2 == brute_force_count(loose)
    assert sudoku_solver.count_solutions([1, 1] + [0] * 79) == 0
    assert sudoku_solver.solve([0] * 81).count == 1


def test_first_bad_row_is_reported_and_blocks_join(tmp_path, monkeypatch):
    monkeypatch.setattr(sudoku, "READ_BLOCK", 2)  # several array blocks
    good = f"x,{GOOD_Q},{GOOD_A},7"
    rows = [good, good, f"x,{GOOD_Q[:-1]}x,{GOOD_A},1", good, f"x,{GOOD_Q[:5]},{GOOD_A},1", good]
    path = tmp_path / "train.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="train.csv line 4: question holds"):
        sudoku.read_sudoku_csv(path)
    parsed = sudoku.read_sudoku_csv(path, skip_bad=True)
    assert parsed.skipped == 2 and parsed.lines.tolist() == [2, 3, 5, 7]
    assert parsed.ratings.tolist() == [7] * 4 and len(parsed.questions) == 4
