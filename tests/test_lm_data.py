"""HRM-Text data: tokenizer, corpus -> token shards (resumable, atomic), epoch sampling, reading back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from hrm.lm import data as lmdata  # noqa: E402
from hrm.lm.data import BuildArgs, TokenData, build, load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    texts = (t for _, r in lmdata.synthetic_rows(1500, seed=1) for t in (r["instruction"], r["response"]))
    lmdata.train_tokenizer(texts, 400, out)
    return out


def test_tokenizer_pins_special_ids_and_encodes_their_strings_as_text(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert [tok.token_to_id(t) for t in lmdata.SPECIAL_TOKENS] == list(range(len(lmdata.SPECIAL_TOKENS)))
    assert json.loads((tokenizer_dir / "config.json").read_text()) == {"model_type": "qwen3"}
    ids = tok.encode("say <|im_end|> now", add_special_tokens=False).ids
    assert tok.token_to_id("<|im_end|>") not in ids  # special-token strings in text stay plain text
    assert tok.decode(ids) == "say <|im_end|> now"
    assert tok.encode("12345", add_special_tokens=False).tokens == list("12345")  # digits split one by one


def _build(tmp: Path, source: str, tokenizer_dir: Path, **kw) -> Path:
    return build(BuildArgs(source=source, out=tmp / "out", tokenizer=tokenizer_dir, **kw))


def test_layout_rows_and_frame_tokens(tmp_path, tokenizer_dir):
    out = _build(tmp_path, "synth:300", tokenizer_dir, epochs=2, context=64, chunk_rows=100)
    d = TokenData(out)
    tok = load_tokenizer(out / "tokenizer")
    boq, eoq, eoa, conds = lmdata.special_ids(tok)
    assert d.num_epochs == 2 and d.context == 64 and d.meta["max_seq_len"] == 65 and d.meta["vocab_size"] is None
    assert d.tokens.dtype == np.uint16 and d.meta["num_rows"] == 300
    rows = list(lmdata.synthetic_rows(300, seed=0))
    e0 = d.epoch(0)
    assert sorted(e0["inst_start"].tolist()) == sorted(set(e0["inst_start"].tolist()))  # each row once per epoch
    for i, (inst, resp) in enumerate(d.samples(0, list(range(20)))):
        assert inst[0] == boq and inst[-1] == eoq and resp[-1] == eoa
        assert inst[1] in (conds["direct"], conds["cot"])
        assert len(inst) + len(resp) - 1 == d.lengths(0)[i]
    texts = {tok.decode(inst[2:-1].tolist()) for inst, _ in d.samples(0, list(range(len(e0["inst_len"]))))}
    assert texts == {r["instruction"] for _, r in rows}
    info = json.loads((out / "tokenizer_info.json").read_text())
    assert info["boq"] == "<|im_start|>" and info["eoa"] == "<|box_end|>"
    assert not (tmp_path / ".out.partial").exists()


def test_interrupted_build_resumes_to_the_same_bytes(tmp_path, tokenizer_dir):
    ref = _build(tmp_path / "ref", "synth:1000", tokenizer_dir, epochs=2, context=64, chunk_rows=128)
    seen: list[dict] = []

    def stop_after_three(p: dict) -> None:
        seen.append(p)
        if len(seen) == 3:
            raise KeyboardInterrupt

    args = BuildArgs(source="synth:1000", out=tmp_path / "cut" / "out", tokenizer=tokenizer_dir, epochs=2,
                     context=64, chunk_rows=128)
    with pytest.raises(KeyboardInterrupt):
        build(args, progress=stop_after_three)
    part = tmp_path / "cut" / ".out.partial"
    assert not args.out.exists() and (part / "progress.json").is_file()
    with open(part / "tokens.bin", "ab") as f:  # a kill in the middle of the next chunk's write
        f.write(b"\x07" * 50)
    resumed: list[dict] = []
    build(args, progress=resumed.append)
    assert resumed[0]["rows_read"] == 4 * 128  # the three chunks done were not redone
    for rel in ["tokens.npy", "metadata.json", *(f"epoch_{k}/{n}.npy" for k in (0, 1) for n in lmdata.INDEX_NAMES)]:
        assert (args.out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert not part.exists()


def test_other_arguments_on_a_half_done_build_are_refused(tmp_path, tokenizer_dir):
    args = BuildArgs(source="synth:400", out=tmp_path / "out", tokenizer=tokenizer_dir, chunk_rows=100)

    def stop(p: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(args, progress=stop)
    args.seed = 5
    with pytest.raises(ValueError, match="half-done build of other arguments"):
        build(args)


def test_files_truncate_and_drop_to_the_context(tmp_path, tokenizer_dir):
    src = tmp_path / "corpus"
    src.mkdir()
    rows = [{"instruction": "short", "response": "a fine answer here"},
            {"instruction": "x", "response": ""},  # response = [EOA] only: dropped
            {"instruction": "word " * 80, "response": "ok"},  # the instruction alone fills the context: dropped
            {"instruction": "long answer", "response": "word " * 80, "condition": "synth,cot"}]  # truncated
    (src / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (src / "b.txt").write_text("The red cat.\n\nA dog.\n")
    out = _build(tmp_path, str(src), tokenizer_dir, epochs=1, context=32)
    d = TokenData(out)
    assert d.meta["dropped"] == {"instruction_fills_context": 1, "response_too_short": 1, "truncated": 1}
    assert d.meta["num_rows"] == 3 and d.meta["tasks"] == ["a.jsonl", "b.txt"]
    assert int(d.lengths(0).max()) <= 32
    tok = load_tokenizer(out / "tokenizer")
    conds = lmdata.special_ids(tok)[3]
    frames = [inst[1:-1].tolist() for inst, _ in d.samples(0, list(range(3)))]
    assert [conds["synth"], conds["cot"]] in [f[:2] for f in frames]
    assert [conds["noisy"]] in frames  # the txt file: a `noisy` row with an empty instruction


def test_epochs_take_new_rows_of_each_task_first():
    tasks = np.array([0] * 10 + [1] * 3)
    epochs = lmdata._sample_epochs(tasks, epochs=3, max_per_task=4, seed=0)
    for e in epochs:
        assert (tasks[e] == 0).sum() == 4 and (tasks[e] == 1).sum() == 3
    first_two = np.concatenate([e[tasks[e] == 0] for e in epochs[:2]])
    assert len(set(first_two.tolist())) == 8  # no row of task 0 repeats before all 10 were drawn


def test_bad_input_is_one_line(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="does not exist"):
        _build(tmp_path, str(tmp_path / "nope.jsonl"), tokenizer_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "a", "response": "bb", "condition": "chatty"}) + "\n")
    with pytest.raises(ValueError, match="condition tag 'chatty' is unknown"):
        _build(tmp_path, str(bad), tokenizer_dir)
    bad.write_text(json.dumps({"q": "a"}) + "\n")
    with pytest.raises(ValueError, match="fix: give instruction\\+response"):
        _build(tmp_path, str(bad), tokenizer_dir)
    with pytest.raises(ValueError, match="no tokenizer"):
        build(BuildArgs(source="synth:10", out=tmp_path / "o2"))


def test_cli_trains_a_tokenizer_and_builds(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "hrm.lm.cli", "data", "--source", "pydoc", "--out", str(out),
                          "--train-tokenizer", "600", "--epochs", "1", "--context", "256"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    d = TokenData(out)
    assert d.meta["dropped"]["truncated"] > 0 and d.vocab_size <= 600 and (out / "tokenizer/tokenizer.json").is_file()
    res = subprocess.run([sys.executable, "-m", "hrm.lm.cli", "data", "--source", "synth:x", "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "synth:5000" in res.stderr


def test_a_synthetic_build_holds_out_an_lm_eval_task_of_unseen_problems(tmp_path, tokenizer_dir):
    out = _build(tmp_path, "synth:500", tokenizer_dir, epochs=1, context=128)
    tasks = out / "tasks"
    rows = [json.loads(line) for line in (tasks / "test.jsonl").read_text().splitlines()]
    train = {r["instruction"] for _, r in lmdata.synthetic_rows(500, 0)}
    assert len(rows) == 200 and len({r["question"] for r in rows}) == 200
    assert not train & {r["question"] for r in rows}  # held out: none of them was trained on
    add = [r for r in rows if r["kind"] == "add"]
    assert add and all(int(r["answer"]) == sum(map(int, r["question"][8:-1].split(" + "))) for r in add)
    lm_eval = pytest.importorskip("lm_eval.tasks")
    tm = lm_eval.TaskManager(include_path=str(tasks))
    assert lmdata.SYNTH_TASK in tm.all_tasks
    (tasks / "test.jsonl").write_text("")  # an existing task is kept: a rebuild is a no-op
    build(BuildArgs(source="synth:500", out=out, tokenizer=tokenizer_dir, epochs=1, context=128))
    assert (tasks / "test.jsonl").read_text() == ""
