"""`hrm-data view`: the HTML page opened in a real headless Chromium (driven over the DevTools pipe): no console
or page errors, one element per puzzle, drawn lazily as it scrolls into view, the cells of every grid, and the
wrong-only and group filters against the wrong predictions counted here; bad input gets one line."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hrm.arc_vote import vote
from hrm.data import arc, show, view
from hrm.data.cli import main as hrm_data
from hrm.data.format import DatasetError, load_split, read_metadata

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IGNORE = -100


# --- a small DevTools-protocol client over --remote-debugging-pipe (fd 3: commands in, fd 4: replies out) ---


class Browser:
    def __init__(self, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds() -> None:  # move the pipe ends to 3 and 4 without clobbering each other
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--window-size=1200,900", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=True)

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_chrome, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                while b"\0" in buf:
                    msg, buf = buf.split(b"\0", 1)
                    self._messages.put(json.loads(msg))

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            try:
                reply = self._messages.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"chromium did not answer {method} in {timeout} s (exit code "
                                     f"{self.proc.poll()})") from None
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, page: Path) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": page.resolve().as_uri()}, session=True)
        for _ in range(600):  # the page sets body[data-ready] when its script has run to the end
            if self.eval("document.readyState === 'complete' && document.body.dataset.ready === '1'"):
                return
            time.sleep(0.05)
        raise AssertionError(f"{page} never became ready; errors: {self.errors()}")

    def frames(self, n: int = 3) -> None:
        """Let layout and IntersectionObserver callbacks run."""
        self.eval(f"new Promise(r => {{ let k = {n}; const f = () => (--k ? requestAnimationFrame(f) : r(1)); "
                  f"requestAnimationFrame(f); }})")

    def errors(self) -> list[str]:
        found = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(str(p["exceptionDetails"].get("exception", {}).get("description", p)))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                found.append(p["entry"].get("text", ""))
        page_side = self.eval("document.getElementById('errors').textContent")
        return found + ([page_side] if page_side else [])

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))
        artifacts = os.environ.get("HRM_TEST_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(artifacts) / path.name)
        return path

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("HRM_TEST_SLURM") == "1":  # set by ./hrm_savio_setup.sh test, which installs chromium
            pytest.fail("chromium is missing, but `./hrm_savio_setup.sh test` installs it (apt-get, as root)")
        pytest.skip("no chromium binary: apt-get install chromium (./hrm_savio_setup.sh test installs it as root)")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def scroll_through(browser: Browser, per_section: str = "0") -> tuple[dict[int, object], list[int]]:
    """Scroll from the top to the bottom a viewport at a time, evaluating `per_section` (JS of `s`) on every
    section while it is drawn: ({puzzle k: value}, how many were drawn at each step). Drawing is lazy and far
    sections are emptied again, so what a test checks per puzzle is read while it is on screen."""
    browser.eval("window.scrollTo(0, 0)")
    each = (f"Object.fromEntries(Array.from(document.querySelectorAll('section.puzzle[data-drawn]'), "
            f"s => [s.dataset.k, ({per_section})]))")
    seen: dict[int, object] = {}
    counts = []
    for _ in range(5000):
        browser.frames()
        now = browser.eval(each)
        seen.update({int(k): v for k, v in now.items()})
        counts.append(len(now))
        if browser.eval("innerHeight + scrollY >= document.body.scrollHeight - 2"):
            break
        browser.eval("window.scrollBy(0, innerHeight)")
    browser.eval("window.scrollTo(0, 0)")
    browser.frames()
    return dict(sorted(seen.items())), counts


# --- datasets and predictions in the real formats ------------------------------------------------------------


@pytest.fixture(scope="module")
def sudoku_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sudoku")
    assert hrm_data(["generate", "sudoku", "--count", "4", "--test-count", "30", "--seed", "5",
                     "--output-dir", str(root / "csv")]) == 0
    assert hrm_data(["build", "sudoku", "--source", str(root / "csv"), "--output-dir", str(root / "ds")]) == 0
    return root / "ds"


def write_preds(run: Path, step: int, data: Path, pred: np.ndarray, keep: np.ndarray, ranks: int = 2,
                halt_max_steps: int = 16) -> Path:
    """hrm-evaluate's files for `step`: step_N_all_preds.{rank} (torch dicts of the reference's keys, logits bf16
    whose argmax is `pred`), rows `keep` only, shuffled over the ranks, each file ending in padding rows the
    way the loader pads a short batch; and the run's all_config.yaml."""
    meta = read_metadata(data / "test")
    arrays = load_split(data / "test")
    rows = np.flatnonzero(keep)
    np.random.default_rng(step).shuffle(rows)
    puzzle = np.searchsorted(arrays["puzzle_indices"], np.arange(len(arrays["inputs"])), side="right") - 1
    run.mkdir(parents=True, exist_ok=True)
    for rank, part in enumerate(np.array_split(rows, ranks)):
        n, pad = len(part), 3
        inputs = np.full((n + pad, meta.seq_len), meta.pad_id, dtype=np.int32)
        labels = np.full((n + pad, meta.seq_len), IGNORE, dtype=np.int32)
        ids = np.full(n + pad, meta.blank_identifier_id, dtype=np.int32)
        chosen = np.full((n + pad, meta.seq_len), 0, dtype=np.int64)
        inputs[:n] = arrays["inputs"][part]
        lab = np.asarray(arrays["labels"][part]).astype(np.int32)
        lab[lab == meta.ignore_label_id] = IGNORE
        labels[:n] = lab
        ids[:n] = arrays["puzzle_identifiers"][puzzle[part]]
        chosen[:n] = pred[part]
        logits = torch.full((n + pad, meta.seq_len, meta.vocab_size), -3.0)
        logits.scatter_(2, torch.from_numpy(chosen)[..., None], 5.0)
        torch.save({"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
                    "puzzle_identifiers": torch.from_numpy(ids), "logits": logits.to(torch.bfloat16),
                    "q_halt_logits": torch.linspace(-2, 2, n + pad), "q_continue_logits": torch.zeros(n + pad)},
                   run / f"step_{step}_all_preds.{rank}")
    (run / "all_config.yaml").write_text(yaml.safe_dump({"data_path": str(data), "arch": {
        "halt_max_steps": halt_max_steps}}))
    return run / f"step_{step}"


def corrupt(labels: np.ndarray, rows: list[int], cells: int, vocab: int, seed: int = 0,
            lo: int = 1) -> np.ndarray:
    """Labels with `cells` changed cells in each of `rows`: predictions that are wrong exactly there."""
    rng = np.random.default_rng(seed)
    pred = np.asarray(labels).astype(np.int64).copy()
    for r in rows:
        for c in rng.choice(pred.shape[1], size=cells, replace=False):
            pred[r, c] = lo + (pred[r, c] - lo + 1 + rng.integers(vocab - lo - 1)) % (vocab - lo)
    return pred


# --- tests ---------------------------------------------------------------------------------------------------


def test_sudoku_predictions_page(browser, sudoku_data, tmp_path):
    arrays = load_split(sudoku_data / "test")
    labels = np.asarray(arrays["labels"])
    n = len(labels)
    wrong_rows = [1, 4, 9, 17, 22, 28]
    pred = corrupt(labels, wrong_rows, cells=3, vocab=11, lo=2)
    keep = np.ones(n, dtype=bool)
    keep[[2, 9]] = False  # no prediction for these (e.g. eval_max_batches); 9 was also a wrong one
    prefix = write_preds(tmp_path / "run", 40, sudoku_data, pred, keep)
    wrong_puzzles = int(((pred != labels).any(axis=1) & keep).sum())  # one example per Sudoku puzzle
    assert wrong_puzzles == len(wrong_rows) - 1

    page = tmp_path / "sudoku.html"
    assert hrm_data(["view", str(sudoku_data), "--preds", str(prefix), "--out", str(page)]) == 0
    browser.open(page)
    assert browser.errors() == []
    assert browser.eval("document.querySelectorAll('section.puzzle').length") == n
    seen, counts = scroll_through(browser, "[s.querySelectorAll('.c').length, s.querySelectorAll('.c.x').length]")
    assert counts[0] < n, f"all {n} puzzles drawn before scrolling: drawing is not lazy"
    assert max(counts) < n, "every puzzle drawn at once: sections far from the viewport are not emptied"
    assert list(seen) == list(range(n))  # scrolling drew every one
    # input, label and prediction grids where there is one; the prediction's wrong cells marked
    assert [c for c, _ in seen.values()] == [81 * (3 if keep[i] else 2) for i in range(n)]
    assert [x for _, x in seen.values()] == [int((pred[i] != labels[i]).sum()) if keep[i] else 0 for i in range(n)]
    givens = browser.eval("document.querySelector('section.puzzle').querySelectorAll('figure')[1]"
                          ".querySelectorAll('.c.g').length")
    assert givens == int((np.asarray(arrays["inputs"][0]) > 1).sum())
    assert "ACT steps 16" in browser.eval("document.querySelector('.meta').textContent")
    assert "wrong 3 wrong cells" in browser.eval("document.querySelector('section[data-k=\"1\"] .meta').textContent")

    browser.eval("window.scrollTo(0, 0); const w = document.getElementById('wrong-only'); w.click()")
    visible = "Array.from(document.querySelectorAll('section.puzzle')).filter(s => s.style.display !== 'none')"
    assert browser.eval(f"{visible}.length") == wrong_puzzles
    assert browser.eval(f"{visible}.map(s => Number(s.dataset.k))") == [
        i for i in range(n) if keep[i] and (pred[i] != labels[i]).any()]
    browser.eval("document.getElementById('wrong-only').click(); const g = document.getElementById('group');"
                 "g.value = '4'; g.dispatchEvent(new Event('input'))")
    assert browser.eval(f"{visible}.map(s => Number(s.dataset.k))") == [4]  # Sudoku: one puzzle per group
    assert browser.errors() == []
    assert browser.screenshot(tmp_path / "viewer_sudoku.png").stat().st_size > 1000


def test_maze_page_of_the_reference_build(browser, raw_data, tmp_path):
    data = raw_data / "maze-30x30-hard-1k" / "hrm-built"
    page = view.write_view(data, tmp_path / "maze.html", split="test", start=100, limit=25)
    browser.open(page)
    assert browser.errors() == []
    assert browser.eval("document.querySelectorAll('section.puzzle').length") == 25
    seen, _ = scroll_through(browser, "s.querySelectorAll('.c').length")
    assert seen == {k: 2 * 900 for k in range(25)}
    labels = np.asarray(load_split(data / "test")["labels"][100])
    path_cells = browser.eval("document.querySelector('section.puzzle').querySelectorAll('figure')[1]"
                              ".querySelectorAll('.c.t5').length")
    assert path_cells == int((labels == 5).sum())  # token 5 = "o", the path
    assert browser.eval("document.querySelector('h3').textContent").startswith("puzzle 100")
    browser.screenshot(tmp_path / "viewer_maze.png")


@pytest.fixture(scope="module")
def arc_data(raw_data, tmp_path_factory) -> Path:
    from test_arc_data import small_raw

    root = tmp_path_factory.mktemp("arc")
    src = small_raw(raw_data, root / "raw")
    return arc.build_arc([src], root / "ds", num_aug=2, seed=1, workers=1, quiet=True)


def test_arc_page_with_voted_attempts(browser, arc_data, tmp_path):
    arrays = load_split(arc_data / "test")
    labels = np.asarray(arrays["labels"])
    names = json.loads((arc_data / "identifiers.json").read_text())
    puzzle = np.searchsorted(arrays["puzzle_indices"], np.arange(len(labels)), side="right") - 1
    task_of = [names[int(arrays["puzzle_identifiers"][p])].split("_")[0] for p in puzzle]
    tasks = sorted(set(task_of))
    bad_task = tasks[0]  # every prediction of this task is wrong in one colour cell
    rows = [r for r in range(len(labels)) if task_of[r] == bad_task]
    pred = labels.astype(np.int64).copy()
    for r in rows:
        grid = pred[r].reshape(30, 30)
        grid[0, 0] = 2 + (grid[0, 0] - 2 + 1) % 10
    prefix = write_preds(tmp_path / "run", 8, arc_data, pred, np.ones(len(labels), dtype=bool))
    result = vote(prefix, arc_data, output_json=tmp_path / "run" / "step_8_arc_vote.json")
    assert result["correct"]["pass@2"] == len(tasks) - 1

    page = view.write_view(arc_data, tmp_path / "arc.html", preds=prefix)
    browser.open(page)
    assert browser.errors() == []
    n = len(arrays["puzzle_identifiers"])
    assert browser.eval("document.querySelectorAll('section.puzzle').length") == n
    # Each grid is cropped to its colour cells: input + label + prediction (drawn in the label's box).
    want = [sum(show.arc_crop(arrays["inputs"][e]).size + 2 * show.arc_crop(labels[e]).size
                for e in range(arrays["puzzle_indices"][p], arrays["puzzle_indices"][p + 1])) for p in range(n)]
    seen, _ = scroll_through(browser, "s.querySelectorAll('.example[data-e] .c').length")
    assert list(seen.values()) == want and list(seen) == list(range(n))
    seen, _ = scroll_through(browser, "Array.from(s.querySelectorAll('.votes .badge'), b => b.textContent)")
    verdicts = [v for badges in seen.values() for v in badges]
    wrong = browser.eval("Array.from(document.querySelectorAll('section.puzzle[data-state=wrong]'), s => "
                         "s.querySelector('h3').textContent)")
    assert len(wrong) == len({p for p in puzzle[rows]}) and all(bad_task in h for h in wrong)
    # The unaugmented test puzzle of each task shows its two voted attempts, pass@2 as voted.
    slots = {t: len(v["test_inputs"]) for t, v in json.loads((tmp_path / "run" / "step_8_arc_vote.json")
                                                              .read_text())["tasks"].items()}
    assert sorted(verdicts) == sorted(["pass@2 no"] * slots[bad_task]
                                      + ["pass@2 yes"] * sum(v for t, v in slots.items() if t != bad_task))
    assert browser.errors() == []
    browser.screenshot(tmp_path / "viewer_arc.png")


def test_bad_input_is_one_line_before_any_page(sudoku_data, tmp_path, capsys):
    out = tmp_path / "v.html"
    assert hrm_data(["view", str(sudoku_data), "--preds", str(tmp_path / "nowhere" / "step_5"), "--out",
                     str(out)]) == 2
    err = capsys.readouterr().err
    assert "no prediction files" in err and err.count("\n") == 1 and not out.exists()
    assert hrm_data(["view", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "dataset.json not found" in capsys.readouterr().err
    assert hrm_data(["view", str(sudoku_data), "--start", "99", "--out", str(out)]) == 2
    assert "--start 99 is out of range" in capsys.readouterr().err
    # Predictions of another dataset: no row matches, and the message says what to pass.
    other = tmp_path / "other"
    arrays = load_split(sudoku_data / "test")
    prefix = write_preds(tmp_path / "run", 3, sudoku_data, np.asarray(arrays["labels"]).astype(np.int64),
                         np.ones(len(arrays["labels"]), dtype=bool))
    assert hrm_data(["generate", "sudoku", "--count", "2", "--test-count", "3", "--seed", "9",
                     "--output-dir", str(other / "csv")]) == 0
    assert hrm_data(["build", "sudoku", "--source", str(other / "csv"), "--output-dir", str(other / "ds")]) == 0
    capsys.readouterr()
    assert hrm_data(["view", str(other / "ds"), "--preds", str(prefix), "--out", str(out)]) == 2
    assert "matches an example" in capsys.readouterr().err and not out.exists()
    with pytest.raises(DatasetError, match="is a directory"):
        view.write_view(sudoku_data, tmp_path)


def test_collect_links_one_viewer_page_per_evaluated_run(browser, sudoku_data, tmp_path):
    from slurm.collect import collect

    arrays = load_split(sudoku_data / "test")
    labels = np.asarray(arrays["labels"])
    pred = corrupt(labels, [0, 3], cells=1, vocab=11, lo=2)
    runs = []
    for name, with_preds in (("evaluated", True), ("no-preds", False)):
        run = tmp_path / "runs" / name
        write_preds(run, 16, sudoku_data, pred, np.ones(len(labels), dtype=bool))
        if not with_preds:
            for f in run.glob("step_16_all_preds.*"):
                f.unlink()
        (run / "metrics.jsonl").write_text(json.dumps({"step": 16, "all/exact_accuracy": 0.9}) + "\n")
        (run / "step_16_eval.json").write_text(json.dumps({"step": 16, "metrics": {"all": {"exact_accuracy": 0.9}}}))
        runs.append(run)
    out = tmp_path / "results"
    collect(runs, out)
    pages = sorted(p.name for p in out.glob("view_*.html"))
    assert pages == ["view_evaluated.html"]
    assert "`view_evaluated.html`" in (out / "report.md").read_text()
    browser.open(out / pages[0])
    assert browser.errors() == []
    assert browser.eval("document.querySelectorAll('section.puzzle[data-state=wrong]').length") == 2


def test_logistics_map_colours_every_token(browser, tmp_path):
    from hrm.data import logistics

    data = tmp_path / "city"
    logistics.build(logistics.GENERATED, data, num_train=2, num_test=3, grid_size=12, seed=4)
    labels = np.asarray(load_split(data / "test")["labels"])
    page = view.write_view(data, tmp_path / "city.html")
    browser.open(page)
    assert browser.errors() == []
    assert browser.eval("document.getElementById('title').textContent").endswith("(logistics)")
    assert browser.eval("document.querySelectorAll('section.puzzle').length") == len(labels)
    seen, _ = scroll_through(browser, "s.querySelectorAll('figure')[1].querySelectorAll('.c.t' + "
                             f"{logistics.ROUTE}).length")
    assert list(seen.values()) == [int((row == logistics.ROUTE).sum()) for row in labels]
    assert all(seen.values())  # every map has a route
    colours = browser.eval("Array.from({length: 14}, (_, t) => getComputedStyle(document.querySelector('.t' + t) "
                           "|| document.body).backgroundColor)")
    used = sorted({int(t) for t in np.unique(labels)})
    assert len({colours[t] for t in used}) == len(used)  # every token on the map has its own colour
    browser.screenshot(tmp_path / "viewer_logistics.png")


def test_predictions_named_by_prefix_file_or_run_directory(sudoku_data, tmp_path):
    labels = np.asarray(load_split(sudoku_data / "test")["labels"])
    pred = corrupt(labels, [5], cells=2, vocab=11, lo=2)
    prefix = write_preds(tmp_path / "run", 24, sudoku_data, pred, np.ones(len(labels), dtype=bool), ranks=3)
    pages = [view.page_data(sudoku_data, preds=p)["preds"]
             for p in (prefix, tmp_path / "run", tmp_path / "run" / "step_24_all_preds.1")]
    assert all(p["source"] == str(prefix) for p in pages)
    assert pages[0]["pred"] == pages[1]["pred"] == pages[2]["pred"]
    states = np.frombuffer(base64.b64decode(pages[0]["state"]), dtype=np.uint8)
    assert states.tolist() == [view.WRONG if i == 5 else view.RIGHT for i in range(len(labels))]
    assert pages[0]["halt_max_steps"] == 16 and pages[0]["steps"] is None


def test_a_real_evaluation_reads_back_with_its_exact_accuracy(tmp_path, capsys):
    """Train a tiny model, hrm-evaluate it, and view its step_N_all_preds.0: the page's right/wrong per example
    gives the evaluator's exact_accuracy (so the viewer reads the evaluator's real files the evaluator's way)."""
    from test_train import make_dataset, run, train_cmd

    from hrm import evaluate

    data = make_dataset(tmp_path / "toy")
    res = run(train_cmd(data, tmp_path / "run", "epochs=1", "eval_interval=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert evaluate.main([f"checkpoint={tmp_path / 'run' / 'step_8'}"]) == 0
    capsys.readouterr()
    assert hrm_data(["view", str(data), "--preds", str(tmp_path / "run" / "step_8")]) == 0
    assert (tmp_path / "run" / "step_8_view.html").is_file()
    preds = view.page_data(data, preds=tmp_path / "run" / "step_8")["preds"]
    states = np.frombuffer(base64.b64decode(preds["state"]), dtype=np.uint8)
    metrics = json.loads((tmp_path / "run" / "step_8_eval.json").read_text())["metrics"]["all"]
    assert len(states) == 20 and (states != view.NO_PRED).all()
    assert (states == view.RIGHT).mean() == pytest.approx(metrics["exact_accuracy"], abs=1e-6)
    pred = np.frombuffer(base64.b64decode(preds["pred"]), dtype=np.uint8).reshape(20, -1)
    labels = np.asarray(load_split(data / "test")["labels"])
    assert (pred == labels).mean(axis=1).mean() == pytest.approx(metrics["accuracy"], abs=1e-5)
    assert 0 < metrics["accuracy"] < 1  # some cells right and some wrong: the comparison means something
    assert preds["halt_max_steps"] == 3  # TINY's arch.halt_max_steps, from the run's all_config.yaml
