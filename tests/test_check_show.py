"""`hrm-data check` (validation + sampling picture) and `hrm-data show`."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from hrm.data import arc, check, show
from hrm.data.format import DatasetError


@pytest.fixture()
def maze_copy(raw_data, tmp_path):
    dest = tmp_path / "maze"
    shutil.copytree(raw_data / "maze-30x30-hard-1k" / "hrm-built", dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def test_reference_maze_build_is_clean_with_the_documented_numbers(raw_data):
    r = check.check_dataset(raw_data / "maze-30x30-hard-1k" / "hrm-built", 768, epochs=20000,
                            eval_interval=2000, lr_warmup_steps=2000)
    assert r["ok"] and r["errors"] == [] and r["warnings"] == []
    train = r["splits"]["train"]["sets"]["all"]
    assert (train["groups"], train["puzzles"], train["examples"]) == (1000, 1000, 1000)
    assert train["max_input_token"] == 4 and train["max_label_token"] == 5
    s = r["sampling"]
    assert s["examples_per_epoch"] == 1000 and s["batches_per_epoch"] == pytest.approx(1000 / 768, abs=1e-4)
    assert s["mode"] == "traditional" and not s["batch_exceeds_groups"]
    assert s["total_steps"] == 26041  # int(20000 * 1000 * 1 / 768), as the reference computes it
    assert (s["evaluations"], s["steps_per_evaluation"]) == (10, 2604)
    assert s["warmup_epochs"] == pytest.approx(2000 / (1000 / 768), abs=1e-3)
    assert s["test_examples"] == 1000 and s["test_batches"] == 2
    big = check.check_dataset(raw_data / "maze-30x30-hard-1k" / "hrm-built", 4096, full=False)
    assert big["sampling"]["mode"] == "survey" and big["sampling"]["batch_exceeds_groups"]


def test_arc_sampling_picture(raw_data, tmp_path):
    out = arc.build_arc(arc.resolve_dataset_dirs("arc1", None, str(raw_data)), tmp_path / "arc", num_aug=0,
                        workers=2, quiet=True)
    r = check.check_dataset(out, epochs=100000, eval_interval=10000)
    assert r["ok"], r["errors"]
    assert r["identifiers"]["count"] == 961
    s = r["sampling"]
    assert s["groups"] == 960 and s["examples_per_epoch"] == 3988
    assert s["total_steps"] == int(100000 * 960 * (3988 / 960) / 768)


@pytest.mark.parametrize("damage,needle", [
    ("token", "labels hold token 9 >= vocab_size 6"),
    ("indices", "puzzle_indices must start at 0, be non-decreasing"),
    ("identifiers", "identifiers.json has 3 names but num_puzzle_identifiers is 1"),
    ("metadata", "dataset.json not found"),
    ("groups", "groups on disk but dataset.json says total_groups=999"),
])
def test_damage_is_reported(maze_copy, damage, needle):
    split = maze_copy / "train"
    if damage == "token":
        labels = np.load(split / "all__labels.npy")
        labels[5, 7] = 9
        np.save(split / "all__labels.npy", labels)
    elif damage == "indices":
        pi = np.load(split / "all__puzzle_indices.npy")
        pi[3], pi[4] = pi[4], pi[3]
        np.save(split / "all__puzzle_indices.npy", pi)
    elif damage == "identifiers":
        (maze_copy / "identifiers.json").write_text(json.dumps(["<blank>", "a", "b"]))
    elif damage == "metadata":
        (maze_copy / "test" / "dataset.json").unlink()
    elif damage == "groups":
        meta = json.loads((split / "dataset.json").read_text())
        meta["total_groups"] = 999
        (split / "dataset.json").write_text(json.dumps(meta))
    r = check.check_dataset(maze_copy)
    assert not r["ok"]
    assert any(needle in e for e in r["errors"]), r["errors"]


def test_bad_schedule_and_missing_dir(raw_data, tmp_path):
    built = raw_data / "maze-30x30-hard-1k" / "hrm-built"
    r = check.check_dataset(built, epochs=100, eval_interval=30)
    assert any("must divide epochs 100" in e for e in r["errors"])
    r = check.check_dataset(built, epochs=1, global_batch_size=768, lr_warmup_steps=10)
    assert r["ok"] and any("never reaches" in w for w in r["warnings"])
    r = check.check_dataset(built, global_batch_size=768, epochs=100, eval_interval=0)
    assert not r["ok"]
    assert not check.check_dataset(tmp_path / "none")["ok"]


def _cli(module, argv):
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_cli_json_and_exit_code(maze_copy, capsys):
    assert _cli(check, ["check", str(maze_copy), "--json", "--epochs", "20000"]) == 0
    assert json.loads(capsys.readouterr().out)["sampling"]["total_steps"] == 26041
    assert _cli(check, ["check", str(maze_copy)]) == 0
    assert "OK" in capsys.readouterr().out
    (maze_copy / "identifiers.json").write_text("[]")
    assert _cli(check, ["check", str(maze_copy)]) == 1
    assert "error" in capsys.readouterr().out


def test_show_all_kinds(raw_data, tmp_path, capsys):
    arc_out = arc.build_arc([raw_data / "ConceptARC" / "corpus"], tmp_path / "arc", num_aug=2, workers=1,
                            quiet=True)
    cases = [(raw_data / "maze-30x30-hard-1k" / "hrm-built", "test", 3, "maze", "S"),
             (raw_data / "sudoku-extreme" / "hrm-built-train-1k", "train", 0, "sudoku", "+-------+"),
             (arc_out, "train", 1, "arc", "_t")]
    for path, split, index, kind, needle in cases:
        puzzle = show.load_puzzle(path, index, split)
        assert puzzle["kind"] == kind
        assert _cli(show, ["show", str(path), "--index", str(index), "--split", split,
                           "--png", str(tmp_path / f"{kind}.png")]) == 0
        out = capsys.readouterr().out
        assert needle in out and f"puzzle {index}" in out
        assert (tmp_path / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"
    # ARC names come back from identifiers.json; the grid shows the colours as digits too.
    puzzle = show.load_puzzle(arc_out, 1, "train")
    assert puzzle["name"].startswith("AboveBelow1_t") and puzzle["identifier"] == 2
    with pytest.raises(DatasetError, match="out of range"):
        show.load_puzzle(arc_out, 10**6, "train")
    # ConceptARC alone has no evaluation tasks: an empty test split is worth a warning.
    report = check.check_dataset(arc_out, full=False)
    assert report["ok"] and any("test: the split holds no examples" in w for w in report["warnings"])


def test_token_scan_reads_the_file_dtype(tmp_path):
    """The reference's augmented Sudoku writes int64 tokens: the scan must read them as int64, not bytes."""
    import numpy as np

    from hrm.data.check import _scan

    rows = np.array([[1, 2, 300], [0, 0, 0], [7, 1, 1]], dtype=np.int64)
    np.save(tmp_path / "x.npy", rows)
    assert _scan(tmp_path / "x.npy", 3, 0) == (0, 300, 1)
