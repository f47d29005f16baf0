"""The OnDemand notebooks (guides/ondemand/*.ipynb) run end to end on CPU, with small settings injected after
their `parameters` cell (the papermill convention), in a kernel that is this interpreter. Assertions check
what the notebooks computed against the files they read: the run's metrics.jsonl, fabricated runs with known
numbers, and ARC predictions whose right and wrong answers are known."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml
from nbclient import NotebookClient

from hrm.data import arc
from hrm.data.augment import dihedral, parse_augmented_name
from hrm.data.format import load_split

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "guides" / "ondemand"
KERNEL = "hrm-notebook-test"


@pytest.fixture(scope="module", autouse=True)
def kernel(tmp_path_factory):
    """A kernelspec running this interpreter, found through a private JUPYTER_PATH (no network, no install)."""
    tmp = tmp_path_factory.mktemp("jupyter")
    spec = tmp / "data" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hrm (tests)", "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(tmp / "data"))
    mp.setenv("JUPYTER_DATA_DIR", str(tmp / "data"))
    mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))
    mp.setenv("JUPYTER_CONFIG_DIR", str(tmp / "config"))
    mp.setenv("IPYTHONDIR", str(tmp / "ipython"))
    mp.setenv("MPLCONFIGDIR", str(tmp / "matplotlib"))
    mp.setenv("HRM_SLURM_HOME", str(tmp / "hrm-slurm"))  # `hrm-slurm status` reads an empty registry
    mp.delenv("MPLBACKEND", raising=False)
    yield
    mp.undo()


def execute(name: str, params: dict, cwd: Path, timeout: int = 300) -> nbformat.NotebookNode:
    """Run a notebook with `params` assigned in a cell right after its `parameters` cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    source = "# injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)
    cwd.mkdir(parents=True, exist_ok=True)
    NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def text(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text or HTML."""
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.output_type == "stream":
                parts.append(o.text)
            elif "data" in o:
                parts += [o.data.get("text/html", ""), o.data.get("text/plain", "")]
    return "\n".join(parts)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def html_rows(nb: nbformat.NotebookNode) -> list[list[str]]:
    """The cells of every HTML table row the notebook displayed."""
    rows = []
    for tr in re.findall(r"<tr>(.*?)</tr>", text(nb), flags=re.S):
        rows.append([html.unescape(x) for x in re.findall(r"<t[dh]>(.*?)</t[dh]>", tr, flags=re.S)])
    return rows


def png_colours(path: Path) -> set[str]:
    import matplotlib.image

    rgb = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int).reshape(-1, 3)
    return {"#" + "".join(f"{v:02X}" for v in c) for c in np.unique(rgb, axis=0)}


def test_every_notebook_has_a_parameters_cell_and_the_hrm_kernel():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["arc_eval.ipynb", "monitor.ipynb", "quickstart.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "hrm"
        assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: clear outputs"


# --- quickstart: a real (tiny) run; the printed and plotted losses are the run's own --------------------------


def test_quickstart_trains_and_plots_the_run_loss(tmp_path):
    work = tmp_path / "qs"
    nb = execute("quickstart.ipynb", {
        "work_dir": str(work), "train_puzzles": 40, "test_puzzles": 8, "num_aug": 1, "seed": 1, "max_steps": 10,
        "device": "cpu", "compile": "false", "wandb_mode": "disabled",
        "extra_overrides": ["arch.hidden_size=32", "global_batch_size=16", "lr_warmup_steps=2",
                            "eval_max_batches=1"]}, cwd=tmp_path)
    out = text(nb)
    assert "attention backend (auto): sdpa on cpu" in out and "sdpa: OK" in out
    run_dir = work / "runs" / "sudoku-40x2-seed1"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/lm_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 11))
    first, last = train[0]["train/lm_loss"], train[-1]["train/lm_loss"]
    assert f"train lm_loss: {first:.4f} at step 1 -> {last:.4f} at step 10" in out
    ev = [r for r in rows if "all/lm_loss" in r]
    assert ev and f"test at step 10: lm_loss {ev[-1]['all/lm_loss']:.4f}" in out
    assert (run_dir / "loss.png").stat().st_size > 1000 and (work / "puzzle.png").is_file()
    assert images(nb) == 2  # the puzzle and the loss plot
    assert json.loads((run_dir / "status.json").read_text())["step"] == 10


# --- monitor: fabricated runs with known numbers; Slurm absent, then present -----------------------------------


def fake_run(path: Path, steps: int, loss0: float, decay: float, lr: float, state: str) -> list[dict]:
    path.mkdir(parents=True)
    rows = [{"step": s, "time": 1.0 + s, "train/lm_loss": loss0 * decay**s, "train/exact_accuracy": s / (2 * steps)}
            for s in range(1, steps + 1)]
    rows.append({"step": steps, "time": 2.0 + steps, "all/exact_accuracy": 0.25, "all/lm_loss": 1.5})
    text_ = "".join(json.dumps(r) + "\n" for r in rows)
    (path / "metrics.jsonl").write_text(text_ + '{"step": 99, "train/lm_lo')  # a line torn by a kill
    (path / "status.json").write_text(json.dumps({"state": state, "step": steps, "total_steps": 2 * steps,
                                                  "samples_per_s": 123.4}))
    (path / "all_config.yaml").write_text(yaml.safe_dump({"lr": lr, "seed": 0, "arch": {"hidden_size": 64},
                                                          "checkpoint_path": str(path)}))
    return rows


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    fake_run(root / "alpha", 100, 2.0, 0.99, 1e-4, "finished")
    fake_run(root / "Sudoku ACT-torch" / "beta", 60, 2.5, 0.98, 7e-5, "running")  # nested like checkpoints/
    return root


def check_monitor(nb, tmp_path: Path) -> None:
    table = {r[0]: r for r in html_rows(nb)}
    assert len(set(table["run"])) == len(table["run"])  # no column twice
    alpha, beta = table["alpha"], table["beta"]
    assert alpha[1:4] == ["finished", "100", "200"] and beta[1:4] == ["running", "60", "120"]
    assert alpha[4] == f"{2.0 * 0.99**100:.4g}" and beta[4] == f"{2.5 * 0.98**60:.4g}"
    assert "0.25" in alpha and "123.4" in alpha
    assert alpha[-1] == "best: step 100 exact_accuracy 25.00% (last: step 100, 25.00%)"  # as report.md has it
    # Only the setting that differs is compared.
    assert table["lr"][1:] == ["0.0001", "7e-05"] or table["lr"][1:] == ["7e-05", "0.0001"]
    assert "seed" not in table and "arch.hidden_size" not in table
    assert (tmp_path / "curves.png").stat().st_size > 1000 and images(nb) == 1


def test_monitor_without_slurm(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no squeue on this PATH
    nb = execute("monitor.ipynb", {"runs_dir": str(runs_dir), "smooth": 5, "show_queue": True,
                                   "figure_path": str(tmp_path / "curves.png")}, cwd=tmp_path)
    check_monitor(nb, tmp_path)
    assert "No Slurm on this machine (squeue not found)" in text(nb)


@pytest.mark.skipif(os.environ.get("HRM_TEST_SLURM") != "1" or shutil.which("squeue") is None,
                    reason="needs the local Slurm cluster (HRM_TEST_SLURM=1)")
def test_monitor_with_slurm(runs_dir, tmp_path):
    nb = execute("monitor.ipynb", {"runs_dir": str(runs_dir), "smooth": 5, "show_queue": True,
                                   "figure_path": str(tmp_path / "curves.png")}, cwd=tmp_path)
    check_monitor(nb, tmp_path)
    out = text(nb)
    assert "no pipelines recorded yet" in out  # hrm-slurm status on the empty registry
    assert "JOBID" in out and "PARTITION" in out  # squeue answered


# --- arc_eval: predictions with known right and wrong answers -------------------------------------------------

# Three evaluation tasks (their test pairs form the test split). The plan: "alpha" is always right; "bravo" is
# right in one variant and wrong (the same wrong grid) in the others, so the right answer ranks second;
# "charlie" has two test inputs, one always right and one always wrong, so the task never passes.
PLAN = {"alpha": ["right"], "bravo": ["second"], "charlie": ["right", "wrong"]}


def arc_task(rng: np.random.Generator, n_test: int) -> dict:
    def pair():
        grid = rng.integers(0, 4, size=(3, 4))
        grid[0, 0], grid[2, 3] = 1, 2  # asymmetric, so every augmentation is a distinct variant
        return {"input": grid.tolist(), "output": np.fliplr(grid).tolist()}

    return {"train": [pair(), pair()], "test": [pair() for _ in range(n_test)]}


def render(grid: np.ndarray, t: int, mapping: np.ndarray) -> np.ndarray:
    """An original-frame grid as the variant's test row holds it: transformed, at the origin, EOS around it."""
    g = dihedral(mapping[grid], t)
    canvas = np.zeros((30, 30), np.uint8)
    h, w = g.shape
    canvas[:h, :w] = g + 2
    canvas[h, :w] = 1
    canvas[:h, w] = 1
    return canvas.ravel()


@pytest.fixture
def arc_run(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    raw = tmp_path / "raw"
    (raw / "evaluation").mkdir(parents=True)
    tasks = {name: arc_task(rng, len(plan)) for name, plan in PLAN.items()}
    for name, task in tasks.items():
        (raw / "evaluation" / f"{name}.json").write_text(json.dumps(task))
    data = arc.build_arc([raw], tmp_path / "arc-data", num_aug=3, seed=0, workers=1, quiet=True)

    names = json.loads((data / "identifiers.json").read_text())
    test = load_split(data / "test")
    pidx, pid = test["puzzle_indices"], test["puzzle_identifiers"]
    inputs, preds, ids, q = [], [], [], []
    variants: dict = {}
    for p in range(len(pid)):
        task, t, mapping = parse_augmented_name(names[int(pid[p])])
        for e, row in enumerate(range(int(pidx[p]), int(pidx[p + 1]))):
            answer = np.array(tasks[task]["test"][e]["output"])
            v = variants[(task, e)] = variants.get((task, e), -1) + 1
            right = PLAN[task][e] == "right" or (PLAN[task][e] == "second" and v == 0)
            grid = answer if right else (answer + 1) % 10
            pred = render(grid, t, mapping)
            if right:
                assert np.array_equal(pred, test["labels"][row])  # the fabricated answer is the stored label
            inputs.append(np.asarray(test["inputs"][row]))
            preds.append(pred)
            ids.append(int(pid[p]))
            q.append(0.9 if right else 0.6)
    assert variants[("bravo", 0)] >= 2  # at least 3 variants: 2+ wrong votes outrank the single right one
    for _ in range(2):  # padding rows
        inputs.append(np.zeros(900, np.uint8))
        preds.append(np.zeros(900, np.uint8))
        ids.append(0)
        q.append(0.5)
    logits = torch.nn.functional.one_hot(torch.tensor(np.stack(preds), dtype=torch.long), 12).float() * 4 - 2
    q_logit = torch.tensor([math.log(x / (1 - x)) for x in q])
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"inputs": torch.tensor(np.stack(inputs), dtype=torch.int32),
                "labels": torch.tensor(np.stack(inputs), dtype=torch.int32),
                "puzzle_identifiers": torch.tensor(ids, dtype=torch.int32), "logits": logits,
                "q_halt_logits": q_logit, "q_continue_logits": -q_logit}, run / "step_5_all_preds.0")
    (run / "all_config.yaml").write_text(yaml.safe_dump({"data_path": str(data)}))
    return run


def test_arc_eval_pass_at_k_table_and_grids(arc_run, tmp_path):
    figure = tmp_path / "grids.png"
    nb = execute("arc_eval.ipynb", {"run_dir": str(arc_run), "ks": [1, 2, 10], "tasks_to_draw": 3,
                                    "figure_path": str(figure)}, cwd=tmp_path)
    out = text(nb)
    assert "pass@1: 33.33% (1/3 tasks)" in out
    assert "pass@2: 66.67% (2/3 tasks)" in out and "pass@10: 66.67% (2/3 tasks)" in out
    assert "2 padding rows dropped" in out
    table = {r[0]: r[1:] for r in html_rows(nb)}
    assert table["task"] == ["test inputs", "votes", "rank of right answer", "pass@1", "pass@2", "pass@10"]
    assert table["alpha"][2:] == ["1", "✓", "✓", "✓"]
    assert table["bravo"][2:] == ["2", "✗", "✓", "✓"]
    assert table["charlie"][0] == "2" and table["charlie"][2:] == ["1 / -", "✗", "✗", "✗"]
    saved = json.loads((arc_run / "step_5_arc_vote.json").read_text())["summary"]
    assert saved["pass@2"] == pytest.approx(2 / 3) and saved["tasks"] == 3
    # The drawing: 4 test inputs, in the ARC palette (the grids use colours 0..4).
    assert "drew 4 test input(s) of 3 task(s)" in out and images(nb) == 1
    assert {"#000000", "#0074D9", "#FF4136", "#2ECC40"} <= png_colours(figure)
