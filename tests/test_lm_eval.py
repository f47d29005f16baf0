"""lm-eval on HRM-Text, offline: a tiny local multiple_choice task and a tiny generate_until task, scored
through the lm-eval wrapper on a tiny LMModel that was briefly trained on their answers (so the right
answers must win), plus the wrapper's log-likelihoods against a one-sample-at-a-time forward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
tokenizers = pytest.importorskip("tokenizers")

from hrm.lm.data import load_tokenizer, train_tokenizer  # noqa: E402
from hrm.lm.evaluate import PUBLIC_BENCHMARKS, _groups, run_tasks  # noqa: E402
from hrm.lm.lm_eval_model import HRMTextLM, prompt_format, score  # noqa: E402
from hrm.lm.model import build_lm, lm_config, lm_loss, round_vocab  # noqa: E402
from hrm.lm.packing import pack  # noqa: E402

MC = [  # question, choices, answer index
    ("The sky on a clear day is", ["blue", "green", "red"], 0),
    ("Grass in spring is", ["purple", "green", "black"], 1),
    ("Two plus two is", ["five", "three", "four"], 2),
    ("Snow is usually", ["white", "orange", "blue"], 0),
]
GEN = [("Reverse the word cat", "tac"), ("Reverse the word dog", "god"), ("Reverse the word sun", "nus")]


def _tokenizer(tmp: Path):
    text = [q + " " + " ".join(c) for q, c, _ in MC] + [q + " " + a for q, a in GEN] * 3
    return load_tokenizer(train_tokenizer(iter(text), 320, tmp / "tok"))


def _tasks(tmp: Path) -> Path:
    d = tmp / "tasks"
    d.mkdir()
    with (d / "mc.jsonl").open("w") as f:
        for q, c, a in MC:
            f.write(json.dumps({"question": q, "choices": c, "answer": a}) + "\n")
    with (d / "gen.jsonl").open("w") as f:
        for q, a in GEN:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    (d / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    (d / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'gen.jsonl'}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny HRM-Text trained for a few hundred steps on the tasks' right answers (EOA-terminated)."""
    tmp = tmp_path_factory.mktemp("lm_eval")
    tok = _tokenizer(tmp)
    fmt = prompt_format(tok)
    torch.manual_seed(0)
    cfg = lm_config("tiny", round_vocab(tok.get_vocab_size()), max_seq_len=128, attn_backend="sdpa")
    model = build_lm(cfg)

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    samples = [(fmt.instruction(ids(q), "direct", 100), ids(c[a]) + [fmt.eoa]) for q, c, a in MC]
    samples += [(fmt.instruction(ids(q), "direct", 100), ids(a) + [fmt.eoa]) for q, a in GEN]
    batch = pack([(np.asarray(a), np.asarray(b)) for a, b in samples], 256)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss, n = lm_loss(model(batch), batch.labels)
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
        if float(loss / n) < 0.01:
            break
    model.eval()
    return model, tok, fmt, cfg, tmp


def test_wrapper_loglikelihoods_equal_a_one_sample_forward(trained):
    model, tok, fmt, cfg, _ = trained
    lm = HRMTextLM(model, tok, fmt, cfg.max_seq_len, condition="direct", batch_tokens=40)  # several packs

    class Req:
        def __init__(self, *args):
            self.args = args

    reqs = [Req(q, " " + ch) for q, c, _ in MC for ch in c]
    got = lm.loglikelihood(reqs)
    for r, (lp, greedy) in zip(reqs, got):
        inst = fmt.instruction(tok.encode(r.args[0].strip(), add_special_tokens=False).ids, "direct", 100)
        resp = tok.encode(r.args[1].strip(), add_special_tokens=False).ids
        batch = pack([(np.asarray(inst), np.asarray(resp))], len(inst) + len(resp) - 1)
        with torch.no_grad():
            logp = torch.log_softmax(model(batch).float(), -1)
        rows = range(len(inst) - 1, len(inst) - 1 + len(resp))
        want = sum(float(logp[i, t]) for i, t in zip(rows, resp))
        assert lp == pytest.approx(want, abs=1e-3)
        assert greedy == all(int(logp[i].argmax()) == t for i, t in zip(rows, resp))
    assert score(model, [], 64) == []


def test_lm_eval_scores_a_local_multiple_choice_and_a_generation_task(trained, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, fmt, cfg, tmp = trained
    tasks = _tasks(tmp)
    results = run_tasks(lambda cond: HRMTextLM(model, tok, fmt, cfg.max_seq_len, condition=cond, batch_tokens=256),
                        ["tiny_mc", "tiny_gen"], num_fewshot=0, include_path=tasks)
    assert results["tiny_mc"]["acc,none"] == 1.0, results
    assert results["tiny_gen"]["exact_match,none"] == 1.0, results
    assert results["tiny_mc"]["condition"] == "direct"


def test_an_untrained_model_does_not_score_perfectly(trained, monkeypatch):
    """The same tasks on a fresh model: the perfect scores above come from the training, not the harness."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, tok, fmt, cfg, tmp = trained
    torch.manual_seed(1)
    fresh = build_lm(cfg).eval()
    tasks = tmp / "tasks" if (tmp / "tasks").is_dir() else _tasks(tmp)
    results = run_tasks(lambda cond: HRMTextLM(fresh, tok, fmt, cfg.max_seq_len, condition=cond), ["tiny_gen"],
                        num_fewshot=0, include_path=tasks)
    assert results["tiny_gen"]["exact_match,none"] < 1.0


def test_bad_inputs_fail_before_any_request(trained):
    model, tok, fmt, cfg, tmp = trained
    with pytest.raises(ValueError, match="condition 'chatty'"):
        HRMTextLM(model, tok, fmt, cfg.max_seq_len, condition="chatty")
    with pytest.raises(ValueError, match="no '<\\|nope\\|>' token"):
        prompt_format(tok, {"boq": "<|nope|>"})
    with pytest.raises(ValueError, match="unknown lm-eval task"):
        run_tasks(lambda c: None, ["no_such_task_here"], include_path=tmp)


def test_public_tasks_group_by_shots_and_condition():
    groups = _groups(["public"], None, None)
    flat = {t: (shots, cond) for names, shots, cond in groups for t in names}
    assert set(flat) == {b.task for b in PUBLIC_BENCHMARKS}
    assert flat["gsm8k"] == (0, "synth,cot") and flat["mmlu"] == (5, "direct") and flat["arc_challenge"][0] == 25
    assert {n for names, _, _ in _groups(["MMLU", "mmlu"], 0, None) for n in names} == {"mmlu"}
