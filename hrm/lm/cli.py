"""`hrm-lm data | train | export | eval`: the HRM-Text front door (token shards, pretraining, HF export, lm-eval)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hrm.errors import debug_enabled, one_line, report

USAGE = """usage: hrm-lm COMMAND ...
  data    --source PATH|synth:N|pydoc|hf:NAME --out DIR (--tokenizer PATH | --train-tokenizer VOCAB) [--epochs K]
          [--context N] [--max-per-task N] [--seed S]     tokenise a corpus into memory-mapped token shards
  train   +experiment=hrmtext_demo|hrmtext_L|hrmtext_XL [key=value ...]   pretrain (Hydra; torchrun for ranks)
  export  CKPT OUT_DIR [--step N] [--no-ema]              a Hugging Face `hrm_text` folder from a run
  eval    CKPT --tasks public|gsm8k,mmlu,... [--limit N] [--include-path DIR] ...   lm-eval on a run"""


def _data(argv: list[str]) -> int:
    from hrm.lm.data import BuildArgs, TokenData, build

    p = argparse.ArgumentParser(prog="hrm-lm data", description="Tokenise a corpus into data_io's sampled layout.")
    p.add_argument("--source", required=True, help="jsonl/parquet/txt file or folder, synth:N, pydoc, or hf:NAME")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tokenizer", type=Path, help="a tokenizer.json (or its folder)")
    p.add_argument("--train-tokenizer", type=int, metavar="VOCAB", help="train a byte-level BPE of this size")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--context", type=int, default=4096, help="the model's context (tokens per row at most)")
    p.add_argument("--max-per-task", type=int, help="rows per task (source file) per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows per resumable chunk")
    a = p.parse_args(argv)
    if a.tokenizer is not None and a.train_tokenizer is not None:
        raise ValueError("--tokenizer and --train-tokenizer both given; fix: one of them")
    out = build(BuildArgs(source=a.source, out=a.out, tokenizer=a.tokenizer, train_tokenizer=a.train_tokenizer,
                          epochs=a.epochs, context=a.context, max_per_task=a.max_per_task, seed=a.seed,
                          chunk_rows=a.chunk_rows))
    d = TokenData(out)
    print(f"{out}: {d.meta['num_rows']:,} rows, {len(d.tokens):,} tokens, {d.num_epochs} epochs of "
          f"~{d.meta['total_length']:,} tokens, vocab {d.vocab_size}, context {d.context}; dropped {d.meta['dropped']}")
    return 0


def _export(argv: list[str]) -> int:
    from hrm.lm.checkpoint import load_for_inference
    from hrm.lm.export import export_hf

    p = argparse.ArgumentParser(prog="hrm-lm export", description="Write a Hugging Face hrm_text folder.")
    p.add_argument("ckpt", type=Path, help="a run directory (its latest step) or one of its step_N folders")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--step", type=int)
    p.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
    a = p.parse_args(argv)
    model, cfg, tok_dir = load_for_inference(a.ckpt, step=a.step, use_ema=not a.no_ema)
    run_dir = tok_dir.parent if tok_dir is not None else a.ckpt
    info_file = run_dir / "tokenizer_info.json"
    special = json.loads(info_file.read_text()) if info_file.is_file() else {}
    export_hf(model, cfg, a.out_dir, tok_dir, special)
    print(f"wrote {a.out_dir} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _eval(argv: list[str]) -> int:
    from hrm.lm.evaluate import evaluate

    p = argparse.ArgumentParser(prog="hrm-lm eval", description="lm-eval tasks on a run's EMA weights.")
    p.add_argument("ckpt", type=Path)
    p.add_argument("--tasks", required=True, help="public (the public numbers' benchmarks) or task names, commas")
    p.add_argument("--step", type=int)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--limit", type=float, help="examples per task (a fraction when < 1)")
    p.add_argument("--include-path", type=Path, help="a folder of local lm-eval task YAMLs")
    p.add_argument("--condition", help="condition tags of the prompt (direct, cot, synth,cot ...)")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--device")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    limit = None if a.limit is None else (int(a.limit) if a.limit >= 1 else a.limit)
    record = evaluate(a.ckpt, [t for t in a.tasks.split(",") if t], step=a.step, use_ema=not a.no_ema,
                      num_fewshot=a.num_fewshot, limit=limit, include_path=a.include_path, condition=a.condition,
                      batch_tokens=a.batch_tokens, device=a.device, out=a.out)
    print(json.dumps(record["results"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        from hrm.lm.train import main as train_main

        train_main(rest)
        return
    commands = {"data": _data, "export": _export, "eval": _eval}
    if command not in commands:
        report("hrm-lm", f"unknown command {command!r}; fix: one of data, train, export, eval")
        sys.exit(2)
    try:
        code = commands[command](rest)
    except ValueError as e:
        report(f"hrm-lm {command}", one_line(e))
        code = 2
    except (Exception, KeyboardInterrupt) as e:
        if debug_enabled():
            raise
        report(f"hrm-lm {command}", "interrupted" if isinstance(e, KeyboardInterrupt) else one_line(e))
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
