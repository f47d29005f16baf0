"""`hrm-lm eval`: lm-eval tasks on an HRM-Text checkpoint (EMA weights), the public benchmarks included.

The public numbers come from the repository's own generative harness (spec section 6); lm-eval's tasks of
the same names score differently (see `HARNESS_DIFFERENCES` and guides/HRM_TEXT.md), so a number from
here is comparable with other lm-eval numbers, not digit for digit with the paper's table.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Benchmark:
    """One public benchmark: the lm-eval task that stands in for it, its shots and condition tags, and the
    published L / XL scores (README of sapientinc/HRM-Text)."""

    name: str
    task: str
    shots: int
    condition: str
    public_L: float
    public_XL: float
    metric: str


PUBLIC_BENCHMARKS = [
    Benchmark("GSM8k", "gsm8k", 0, "synth,cot", 77.6, 84.7, "exact_match,flexible-extract"),
    Benchmark("MATH", "minerva_math", 0, "synth,cot", 51.2, 56.5, "math_verify,none"),
    Benchmark("DROP", "drop", 3, "direct", 78.6, 82.3, "f1,none"),
    Benchmark("MMLU", "mmlu", 5, "direct", 56.6, 60.7, "acc,none"),
    Benchmark("ARC-C", "arc_challenge", 25, "direct", 75.9, 81.9, "acc_norm,none"),
    Benchmark("HellaSwag", "hellaswag", 10, "direct", 52.7, 63.4, "acc_norm,none"),
    Benchmark("Winogrande", "winogrande", 5, "direct", 67.6, 72.4, "acc,none"),
    Benchmark("BoolQ", "boolq", 5, "direct", 85.0, 86.2, "acc,none"),
]

# Where lm-eval's task is not the public harness's (spec section 6 against lm-eval 0.4.13's task files).
HARNESS_DIFFERENCES = {
    "all MCQ": "public: the model generates one answer letter after 'question\\nA. ..\\nAnswer:' (an invalid "
               "letter scores 1/n); lm-eval: loglikelihood ranking of the choices (letters for MMLU, the answer "
               "texts for ARC, HellaSwag endings, Winogrande partial sentences, yes/no for BoolQ)",
    "prompt": "both: BOQ + condition tokens + prompt + EOQ, the answer after EOQ (this wrapper frames every "
              "lm-eval context that way); lm-eval's few-shot examples sit inside the one prompt, as the "
              "public MCQ shots do, separated by blank lines",
    "MMLU": "public: macro average over the 57 subjects, 3 shots for high_school_european_history; lm-eval "
            "mmlu: the group score weighted by subject size (micro), 5 shots everywhere",
    "GSM8k": "public: 0-shot, synth,cot, the last \\boxed{} (or the whole text) as an integer; lm-eval gsm8k: "
             "'Question: ..\\nAnswer:' format, 5-shot by default (0 here), the last number (flexible-extract)",
    "MATH": "public: all 5000 hendrycks_math test problems 0-shot, math_verify on the last \\boxed{}; lm-eval "
            "minerva_math: the same problems, a Minerva 4-shot prompt by default (0 here), math_verify",
    "DROP": "public: 3 hand-written shots, lm-eval's DROP scoring; lm-eval drop: shots drawn from train; "
            "whether the public figure is F1 or EM is unsettled (F1 assumed)",
    "ARC-C": "public: letters, numeric answer keys mapped by label index; lm-eval: the answer texts (acc_norm)",
}


def benchmark(name: str) -> Benchmark:
    for b in PUBLIC_BENCHMARKS:
        if b.name.lower() == name.lower() or b.task == name:
            return b
    raise KeyError(name)


def special_tokens(tokenizer_dir: Path | None, ckpt_dir: Path) -> dict[str, Any] | None:
    """The run's tokenizer_info (BOQ/EOQ/EOA names and the condition mapping), wherever the data put it:
    tokenizer_info.json next to tokenizer.json or the run, or metadata.json's tokenizer_info one level up."""
    places = [Path(ckpt_dir) / "tokenizer_info.json"]
    if tokenizer_dir is not None:
        places += [Path(tokenizer_dir) / "tokenizer_info.json", Path(tokenizer_dir).parent / "tokenizer_info.json"]
    for p in places:
        if p.is_file():
            return json.loads(p.read_text())
    for p in ([Path(tokenizer_dir).parent / "metadata.json"] if tokenizer_dir else []):
        if p.is_file():
            info = json.loads(p.read_text()).get("tokenizer_info")
            if info:
                return info
    return None


def _groups(tasks: list[str], num_fewshot: int | None, condition: str | None) -> list[tuple[list[str], int | None,
                                                                                            str]]:
    """Tasks grouped by (shots, condition); 'public' expands to the public benchmarks with their own."""
    out: dict[tuple[int | None, str], list[str]] = {}
    for t in tasks:
        if t == "public":
            for b in PUBLIC_BENCHMARKS:
                key = (b.shots if num_fewshot is None else num_fewshot, condition or b.condition)
                out.setdefault(key, []).append(b.task)
            continue
        if any(t in names for names in out.values()):
            continue
        try:
            b = benchmark(t)
            key = (b.shots if num_fewshot is None else num_fewshot, condition or b.condition)
            out.setdefault(key, []).append(b.task)
        except KeyError:
            out.setdefault((num_fewshot, condition or "direct"), []).append(t)
    return [(list(dict.fromkeys(names)), shots, cond) for (shots, cond), names in out.items()]


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def task_manager(tasks: list[str], *, num_fewshot: int | None = None, include_path: str | Path | None = None,
                 condition: str | None = None) -> Any:
    """lm-eval's TaskManager, once every task is known to it (ValueError in one line otherwise)."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"--include-path {include_path} is not a folder; fix: the folder of your task YAMLs")
    tm = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for names, _, _ in _groups(tasks, num_fewshot, condition) for t in names
               if t not in tm.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}; fix: a task lm-eval lists "
                         f"(lm-eval ls tasks), 'public', or --include-path DIR with your task YAML")
    return tm


def run_tasks(lm_factory: Any, tasks: list[str], *, num_fewshot: int | None = None, limit: int | float | None = None,
              include_path: str | Path | None = None, condition: str | None = None, tm: Any = None
              ) -> dict[str, dict[str, Any]]:
    """lm-eval's simple_evaluate once per (shots, condition) group; lm_factory(condition) -> the LM; `tm`: a
    task_manager(...) already made for these tasks."""
    import lm_eval

    if tm is None:
        tm = task_manager(tasks, num_fewshot=num_fewshot, include_path=include_path, condition=condition)
    results: dict[str, dict[str, Any]] = {}
    for names, shots, cond in _groups(tasks, num_fewshot, condition):
        out = lm_eval.simple_evaluate(model=lm_factory(cond), tasks=names, num_fewshot=shots, limit=limit,
                                      task_manager=tm, bootstrap_iters=0, log_samples=False)
        for task, metrics in (out or {}).get("results", {}).items():
            results[task] = {**{k: v for k, v in metrics.items() if not k.endswith("_stderr,none")},
                             "num_fewshot": shots, "condition": cond}
    return results


def evaluate(ckpt_dir: str | Path, tasks: list[str], *, step: int | None = None, use_ema: bool = True,
             num_fewshot: int | None = None, limit: int | float | None = None,
             include_path: str | Path | None = None, condition: str | None = None, batch_tokens: int = 4096,
             device: str | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a run's checkpoint (the latest step unless `step`) on lm-eval tasks; writes
    `<run>/eval/lm_eval_step_N.json` (or `out`) and returns what it wrote."""
    import torch

    from hrm.lm.checkpoint import load_for_inference, resolve_checkpoint
    from hrm.lm.lm_eval_model import HRMTextLM, load_tokenizer, prompt_format

    if not tasks:
        raise ValueError("no tasks; fix: --tasks public, or task names (gsm8k,mmlu,...)")
    ckpt_dir, step = resolve_checkpoint(Path(ckpt_dir), step)  # the checkpoint, then the tasks, then the load
    tm = task_manager(tasks, num_fewshot=num_fewshot, include_path=include_path, condition=condition)
    model, cfg, tok_dir = load_for_inference(ckpt_dir, step=step, use_ema=use_ema)
    if tok_dir is None or not (Path(tok_dir) / "tokenizer.json").is_file():
        raise ValueError(f"no tokenizer.json for {ckpt_dir}; fix: keep the data's tokenizer/ next to the run")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(torch.bfloat16)
    tok = load_tokenizer(Path(tok_dir))
    fmt = prompt_format(tok, special_tokens(Path(tok_dir), ckpt_dir))

    def factory(cond: str) -> HRMTextLM:
        return HRMTextLM(model, tok, fmt, cfg.max_seq_len, condition=cond, batch_tokens=batch_tokens)

    t0 = time.monotonic()
    results = run_tasks(factory, tasks, num_fewshot=num_fewshot, limit=limit, include_path=include_path,
                        condition=condition, tm=tm)
    record = {
        "checkpoint": str(ckpt_dir),
        "step": step,
        "ema": use_ema,
        "limit": limit,
        "seconds": round(time.monotonic() - t0, 1),
        "results": results,
        "public": [asdict(b) for b in PUBLIC_BENCHMARKS if b.task in results],
        "host": os.uname().nodename,
    }
    path = Path(out) if out else ckpt_dir / "eval" / f"lm_eval_step_{step}.json"
    _atomic_json(path, record)
    return record
