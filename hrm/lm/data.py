"""Text corpus -> memory-mapped token shards in data_io's sampled layout (spec section 5), and reading them back.

On disk (`hrm-lm data --out DIR`):
  tokens.npy                      every row's instruction and response ids, concatenated (uint8/uint16/int32)
  epoch_<k>/{inst_start,inst_len,resp_start,resp_len}.npy   int64, each epoch's rows in its shuffled order
  metadata.json                   {tokenizer_info, vocab_size: null, max_seq_len: context + 1, total_length, ...}
  tokenizer/tokenizer.json        the byte-level BPE (+ config.json {"model_type": "qwen3"} for AutoTokenizer)
  tokenizer_info.json             BOQ / EOQ / EOA and the condition-tag tokens, as data_io names them
  tasks/                          synth:N sources only: an lm-eval task of held-out problems (write_synth_task)

An instruction is [BOQ, one token per condition tag, text ids..., EOQ]; a response is [text ids..., EOA].
The build streams the source in chunks into DIR's sibling `.DIR.partial/` (tokens.bin, rows.bin and a
progress.json written after each chunk), so a killed build resumes where its last chunk ended; the
finished folder is renamed into place, so DIR is either absent or complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data.format import atomic_write_json, write_array

# data_io's special tokens, added first so that their ids are fixed (spec section 5).
SPECIAL_TOKENS = [
    "<|PAD|>", "<|direct|>", "<|cot|>", "<|noisy|>", "<|synth|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
]
TOKENIZER_INFO = {
    "boq": "<|im_start|>",
    "eoq": "<|im_end|>",
    "eoa": "<|box_end|>",
    "condition_mapping": {"direct": "<|object_ref_start|>", "cot": "<|object_ref_end|>",
                          "noisy": "<|quad_start|>", "synth": "<|quad_end|>"},
}
# A GPT-4/Qwen-style split (single digits, so numbers tokenise digit by digit).
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
INDEX_NAMES = ("inst_start", "inst_len", "resp_start", "resp_len")
TEXT_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt", ".md")
TXT_CHUNK_CHARS = 2000
TOKENIZER_TEXT_CHARS = 10_000


# --- sources: (task, row) pairs in a fixed order ----------------------------------------------------------


def _row_of(obj: Any, where: str) -> dict:
    """A {condition, instruction, response} row from the usual field names."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a row is not a JSON object; fix: one object per line")
    if "text" in obj and "response" not in obj:
        return {"condition": obj.get("condition") or "noisy", "instruction": "", "response": str(obj["text"])}
    for a, b in (("instruction", "response"), ("prompt", "completion"), ("prompt", "response"),
                 ("question", "answer")):
        if a in obj and b in obj:
            return {"condition": obj.get("condition") or "direct", "instruction": str(obj[a]),
                    "response": str(obj[b])}
    raise ValueError(f"{where}: a row has fields {sorted(obj)[:6]}; fix: give instruction+response "
                     f"(or prompt+completion, question+answer, or text) per row")


def _txt_rows(path: Path) -> Iterator[dict]:
    """Plain text as pretraining rows: paragraphs gathered to ~2,000 characters, condition `noisy`."""
    chunk: list[str] = []
    size = 0
    for para in path.read_text(errors="replace").split("\n\n"):
        para = para.strip()
        if not para:
            continue
        chunk.append(para)
        size += len(para)
        if size >= TXT_CHUNK_CHARS:
            yield {"condition": "noisy", "instruction": "", "response": "\n\n".join(chunk)}
            chunk, size = [], 0
    if chunk:
        yield {"condition": "noisy", "instruction": "", "response": "\n\n".join(chunk)}


def _file_rows(path: Path) -> Iterator[dict]:
    if path.suffix in (".jsonl", ".json"):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        raise ValueError(f"{path}:{n} is not JSON; fix: one JSON object per line") from None
                    yield _row_of(obj, f"{path}:{n}")
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow; fix: pip install pyarrow, or use jsonl") \
                from None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                yield _row_of(obj, str(path))
    else:
        yield from _txt_rows(path)


def _synthetic(n: int, seed: int) -> Iterator[tuple[str, str, str, str, str]]:
    """(kind, condition, instruction, answer, worked steps) of n problems made in code."""
    rng = random.Random(seed)
    words = "red green blue cat dog sun moon tree fish bird star rain snow leaf rock".split()
    for _ in range(n):
        kind = rng.choice(("add", "mul", "copy", "reverse", "sort"))
        cond = rng.choice(("direct", "cot"))
        if kind == "add":
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            inst, ans = f"What is {a} + {b}?", str(a + b)
            steps = f"{a} plus {b}: tens {a // 10 + b // 10}, ones {a % 10 + b % 10}, so {ans}."
        elif kind == "mul":
            a, b = rng.randint(0, 12), rng.randint(0, 12)
            inst, ans = f"What is {a} * {b}?", str(a * b)
            steps = f"{a} added {b} times is {ans}."
        else:
            items = [rng.choice(words) for _ in range(rng.randint(2, 6))]
            out = {"copy": items, "reverse": items[::-1], "sort": sorted(items)}[kind]
            inst, ans = f"{kind.capitalize()} the list: {' '.join(items)}", " ".join(out)
            steps = f"The list has {len(items)} words; {kind} gives {ans}."
        yield kind, cond, inst, ans, steps


def synthetic_rows(n: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """Instruction/response tasks made in code (arithmetic, copy, reverse, sort), each as `direct` (answer only)
    or `cot` (worked steps): a corpus a tiny model can learn on a CPU in minutes."""
    for kind, cond, inst, ans, steps in _synthetic(n, seed):
        resp = ans if cond == "direct" else f"{steps} The answer is {ans}."
        yield kind, {"condition": cond, "instruction": inst, "response": resp}


def synth_count(source: str) -> int:
    tail = source.partition(":")[2]
    return int(tail) if tail else 2000


SYNTH_TASK = "hrmtext_synth"


def write_synth_task(out: Path, n_train: int, seed: int, n_test: int = 200) -> Path:
    """`out/tasks/`: an lm-eval task (generate_until, exact_match) of n_test synthetic problems that are not in
    the training rows, so `hrm-lm eval RUN --tasks hrmtext_synth --include-path out/tasks` measures what the
    demo learnt offline. The YAML names the jsonl by absolute path (lm-eval reads it from any directory)."""
    d = Path(out) / "tasks"
    yaml_file = d / f"{SYNTH_TASK}.yaml"
    if yaml_file.is_file():
        return d
    d.mkdir(parents=True, exist_ok=True)
    seen = {inst for _, _, inst, _, _ in _synthetic(n_train, seed)}
    rows = []
    for kind, _, inst, ans, _ in _synthetic(100 * n_test, seed + 1):
        if inst not in seen:
            seen.add(inst)
            rows.append({"kind": kind, "question": inst, "answer": ans})
            if len(rows) == n_test:
                break
    data = d / "test.jsonl"
    tmp = d / ".test.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(data)
    tmp = d / f".{yaml_file.name}.tmp"
    tmp.write_text(
        f"# {len(rows)} synthetic problems held out of the training rows (hrm-lm data --source synth:N)\n"
        f"task: {SYNTH_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(data.resolve()))}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 40\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    tmp.replace(yaml_file)
    return d


def pydoc_rows() -> Iterator[tuple[str, dict]]:
    """The stdlib's pydoc topics as "Explain <topic>" -> its text (always present, no download)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield "pydoc", {"condition": "direct", "instruction": f"Explain the Python topic '{name}'.",
                        "response": topics[name].strip()}


def source_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise ValueError(f"{path} holds no {'/'.join(TEXT_SUFFIXES)} files; fix: --source a corpus file or folder")
    return files


def check_source(source: str) -> None:
    """Bad --source caught before any work, in one line."""
    if source.startswith("synth"):
        tail = source.partition(":")[2]
        if tail and not tail.isdigit():
            raise ValueError(f"--source {source}: the row count must be a whole number; fix: synth:5000")
    elif source == "pydoc" or source.startswith("hf:"):
        return
    elif not Path(source).exists():
        raise ValueError(f"--source {source} does not exist; fix: a jsonl/parquet/txt file or folder, synth:N, "
                         f"pydoc, or hf:NAME")
    else:
        source_files(Path(source))


def iter_source(source: str, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """(task name, row) for every row of `source`, always in the same order (so a resumed build can skip)."""
    check_source(source)
    if source.startswith("synth"):
        yield from synthetic_rows(synth_count(source), seed)
    elif source == "pydoc":
        yield from pydoc_rows()
    elif source.startswith("hf:"):  # on the cluster only (network or a warm HF cache)
        from datasets import load_dataset

        name, _, split = source[3:].partition(":")
        for i, obj in enumerate(load_dataset(name, split=split or "train", streaming=True)):
            yield name, _row_of(obj, f"{name} row {i}")
    else:
        root = Path(source)
        for f in source_files(root):
            task = str(f.relative_to(root)) if root.is_dir() else f.name
            for row in _file_rows(f):
                yield task.replace("/", "__"), row


# --- tokenizer ----------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterator[str], vocab_size: int, out_dir: Path) -> Path:
    """A byte-level BPE as data_io trains it (NFC, Qwen-style split, ByteLevel without prefix space,
    min_frequency 2, the special tokens first); written to out_dir/tokenizer.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"--train-tokenizer {vocab_size} is too small: a byte-level BPE needs at least "
                         f"{256 + len(SPECIAL_TOKENS)}; fix: --train-tokenizer 1024 or more")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tokenizer.json.tmp-{os.getpid()}"
    tok.save(str(tmp))
    os.replace(tmp, out_dir / "tokenizer.json")
    atomic_write_json(out_dir / "config.json", {"model_type": "qwen3"})
    return out_dir / "tokenizer.json"


def load_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` from a tokenizer.json (or a folder holding one); special-token strings in
    text are encoded as plain text, as data_io does."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no tokenizer at {path}; fix: --tokenizer DIR_WITH_tokenizer.json, or --train-tokenizer N")
    tok = Tokenizer.from_file(str(file))
    if hasattr(tok, "encode_special_tokens"):
        tok.encode_special_tokens = True
    return tok


def special_ids(tok, info: dict = TOKENIZER_INFO) -> tuple[int, int, int, dict[str, int]]:
    def tid(name: str) -> int:
        i = tok.token_to_id(name)
        if i is None:
            raise ValueError(f"the tokenizer has no {name!r} token; fix: a tokenizer trained with data_io's "
                             f"special tokens (--train-tokenizer N makes one)")
        return int(i)

    return (tid(info["boq"]), tid(info["eoq"]), tid(info["eoa"]),
            {k: tid(v) for k, v in info["condition_mapping"].items()})


def token_dtype(vocab_size: int) -> np.dtype:
    """data_io's choice: uint8 / uint16 below 2^8 / 2^16 ids, else int32 (65,536 gives int32)."""
    return np.dtype(np.uint8 if vocab_size < 256 else np.uint16 if vocab_size < 65536 else np.int32)


# --- the build ----------------------------------------------------------------------------------------------


@dataclass
class BuildArgs:
    source: str
    out: Path
    tokenizer: Path | None = None  # a tokenizer.json or its folder
    train_tokenizer: int | None = None  # or: train a BPE of this vocabulary on the source first
    epochs: int = 4
    context: int = 4096  # the model's context; a row fits when inst_len + resp_len - 1 <= context
    max_per_task: int | None = None  # rows per task per epoch (data_io's max_per_file); None = all
    seed: int = 0
    chunk_rows: int = 4096
    tokenizer_rows: int = 200_000  # rows the tokenizer trains on


def _fingerprint(a: BuildArgs, tokenizer_file: Path) -> dict:
    return {"source": a.source, "tokenizer_sha1": hashlib.sha1(tokenizer_file.read_bytes()).hexdigest(),
            "seed": a.seed}


def _partial_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _encode_rows(tok, rows: list[dict], ids: tuple, where: str) -> list[tuple[list[int], list[int]]]:
    boq, eoq, eoa, conds = ids
    inst_enc = tok.encode_batch([r["instruction"] for r in rows], add_special_tokens=False)
    resp_enc = tok.encode_batch([r["response"] for r in rows], add_special_tokens=False)
    out = []
    for r, ie, re_ in zip(rows, inst_enc, resp_enc):
        tags = [t.strip() for t in str(r["condition"]).split(",") if t.strip()]
        bad = [t for t in tags if t not in conds]
        if bad:
            raise ValueError(f"{where}: condition tag {bad[0]!r} is unknown; fix: use {', '.join(conds)}")
        out.append(([boq, *(conds[t] for t in tags), *ie.ids, eoq], [*re_.ids, eoa]))
    return out


def build(args: BuildArgs, progress: Callable[[dict], None] | None = None) -> Path:
    """Tokenise `args.source` into `args.out` (resuming a half-done build of the same arguments)."""
    out = Path(args.out)
    check_source(args.source)
    if (out / "metadata.json").is_file():
        if args.source.startswith("synth"):  # a demo folder built before the held-out task existed
            write_synth_task(out, synth_count(args.source), args.seed)
        return out  # already built: the build is a no-op
    if args.epochs < 1 or args.context < 2:
        raise ValueError(f"--epochs {args.epochs} --context {args.context}: both must be >= 1 (context >= 2)")
    if args.tokenizer is None and args.train_tokenizer is None:
        raise ValueError("no tokenizer; fix: --tokenizer PATH (a tokenizer.json) or --train-tokenizer VOCAB")
    part = _partial_dir(out)
    part.mkdir(parents=True, exist_ok=True)
    tok_dir = part / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        if args.tokenizer is not None:
            src = Path(args.tokenizer)
            src_file = src / "tokenizer.json" if src.is_dir() else src
            load_tokenizer(src_file)  # fails in one line when it is not a tokenizer
            tok_dir.mkdir(exist_ok=True)
            shutil.copyfile(src_file, tok_dir / ".tokenizer.json.tmp")
            os.replace(tok_dir / ".tokenizer.json.tmp", tok_dir / "tokenizer.json")
            atomic_write_json(tok_dir / "config.json", {"model_type": "qwen3"})
        else:
            def texts() -> Iterator[str]:
                for i, (_, row) in enumerate(iter_source(args.source, args.seed)):
                    if i >= args.tokenizer_rows:
                        return
                    yield row["instruction"][:TOKENIZER_TEXT_CHARS]
                    yield row["response"][:TOKENIZER_TEXT_CHARS]

            train_tokenizer(texts(), int(args.train_tokenizer), tok_dir)
    tok = load_tokenizer(tok_dir)
    ids = special_ids(tok)
    vocab = tok.get_vocab_size()
    dtype = token_dtype(vocab)
    fp = _fingerprint(args, tok_dir / "tokenizer.json")

    prog_file = part / "progress.json"
    prog = {"fingerprint": fp, "rows_read": 0, "rows": 0, "tokens": 0, "tasks": [], "done": False}
    if prog_file.is_file():
        saved = json.loads(prog_file.read_text())
        if saved.get("fingerprint") != fp:
            raise ValueError(f"{part} holds a half-done build of other arguments; fix: delete it, or rerun the "
                             f"same command")
        prog = saved
    tok_bin, rows_bin = part / "tokens.bin", part / "rows.bin"
    for f, size in ((tok_bin, prog["tokens"] * dtype.itemsize), (rows_bin, prog["rows"] * 5 * 8)):
        with open(f, "ab") as fh:  # drop what a killed chunk wrote after the last progress record
            fh.truncate(size)
    tasks: list[str] = prog["tasks"]

    def flush(chunk: list[tuple[str, dict]], rows_read: int) -> None:
        encoded = _encode_rows(tok, [r for _, r in chunk], ids, args.source)
        flat, table = [], np.empty((len(chunk), 5), np.int64)
        pos = prog["tokens"]
        for j, ((task, _), (inst, resp)) in enumerate(zip(chunk, encoded)):
            if task not in tasks:
                tasks.append(task)
            table[j] = (pos, len(inst), pos + len(inst), len(resp), tasks.index(task))
            flat += inst + resp
            pos += len(inst) + len(resp)
        for f, data in ((tok_bin, np.asarray(flat, dtype=dtype)), (rows_bin, table)):
            with open(f, "ab") as fh:
                fh.write(data.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
        prog.update(rows_read=rows_read, rows=prog["rows"] + len(chunk), tokens=pos, tasks=tasks)
        atomic_write_json(prog_file, prog)
        if progress is not None:
            progress(dict(prog))

    if not prog["done"]:
        chunk: list[tuple[str, dict]] = []
        n = 0
        for n, item in enumerate(iter_source(args.source, args.seed), 1):
            if n <= prog["rows_read"]:
                continue  # done by the run that was interrupted
            chunk.append(item)
            if len(chunk) >= args.chunk_rows:
                flush(chunk, n)
                chunk = []
        if chunk:
            flush(chunk, n)
        prog["done"] = True
        atomic_write_json(prog_file, prog)
    _finish(args, part, out, prog, dtype, vocab)
    if args.source.startswith("synth"):
        write_synth_task(out, synth_count(args.source), args.seed)
    return out


def _sample_epochs(task_ids: np.ndarray, epochs: int, max_per_task: int | None, seed: int) -> list[np.ndarray]:
    """Per epoch, up to max_per_task rows of each task drawn without replacement from a per-task permutation
    refilled when used up (so epochs see new rows first), then the epoch shuffled as a whole (data_io)."""
    rng = np.random.Generator(np.random.Philox(seed))
    pools = {t: np.flatnonzero(task_ids == t) for t in np.unique(task_ids)}
    perms = {t: rng.permutation(p) for t, p in pools.items()}
    cursor = dict.fromkeys(pools, 0)
    out = []
    for _ in range(epochs):
        picked = []
        for t, pool in pools.items():
            want = len(pool) if max_per_task is None else min(max_per_task, len(pool))
            take = []
            while want > 0:
                left = perms[t][cursor[t]:cursor[t] + want]
                take.append(left)
                cursor[t] += len(left)
                want -= len(left)
                if cursor[t] >= len(pool):
                    perms[t], cursor[t] = rng.permutation(pool), 0
            picked.append(np.concatenate(take))
        rows = np.concatenate(picked)
        out.append(rows[rng.permutation(len(rows))])
    return out


def _finish(args: BuildArgs, part: Path, out: Path, prog: dict, dtype: np.dtype, vocab: int) -> None:
    """Filter and truncate rows to the context, sample the epochs, write the layout, rename into place."""
    table = np.fromfile(part / "rows.bin", dtype=np.int64).reshape(-1, 5)
    inst_start, inst_len, resp_start, resp_len, task = (table[:, i].copy() for i in range(5))
    room = args.context + 1 - inst_len  # data_io truncates the response to fit context + 1 tokens
    fits = inst_len < args.context
    resp_len = np.minimum(resp_len, np.maximum(room, 0))
    keep = fits & (resp_len >= 2)  # a response of one token has nothing to predict after the shift
    dropped = {"instruction_fills_context": int((~fits).sum()), "response_too_short": int((fits & ~keep).sum()),
               "truncated": int((fits & (table[:, 3] > resp_len)).sum())}
    kept = np.flatnonzero(keep)
    if len(kept) == 0:
        raise ValueError(f"no row of {args.source} fits --context {args.context} with a response of 2+ tokens; "
                         f"fix: a larger --context or other data")
    epochs = _sample_epochs(task[kept], args.epochs, args.max_per_task, args.seed)
    tokens = np.lib.format.open_memmap(part / ".tokens.npy.tmp", mode="w+", dtype=dtype, shape=(prog["tokens"],))
    src = np.memmap(part / "tokens.bin", dtype=dtype, mode="r", shape=(prog["tokens"],))
    step = 1 << 24
    for i in range(0, len(tokens), step):
        tokens[i:i + step] = src[i:i + step]
    tokens.flush()
    del tokens, src
    os.replace(part / ".tokens.npy.tmp", part / "tokens.npy")
    lengths = []
    for k, order in enumerate(epochs):
        rows = kept[order]
        ep = part / f"epoch_{k}"
        ep.mkdir(exist_ok=True)
        for name, arr in zip(INDEX_NAMES, (inst_start, inst_len, resp_start, resp_len)):
            write_array(ep / f"{name}.npy", arr[rows].astype(np.int64))
        lengths.append(int((inst_len[rows] + resp_len[rows] - 1).sum()))
    info = {**TOKENIZER_INFO, "tokenizer_path": "tokenizer/tokenizer.json", "vocab_size": vocab}
    atomic_write_json(part / "tokenizer_info.json", info)
    meta = {"tokenizer_info": info, "vocab_size": None, "max_seq_len": args.context + 1,
            "total_length": int(round(sum(lengths) / len(lengths))), "epochs": args.epochs,
            "num_rows": int(len(kept)), "rows_per_epoch": [len(e) for e in epochs], "dropped": dropped,
            "tasks": prog["tasks"], "source": args.source, "seed": args.seed, "max_per_task": args.max_per_task,
            "token_dtype": dtype.name}
    atomic_write_json(part / "metadata.json", meta)
    for f in ("tokens.bin", "rows.bin", "progress.json"):
        (part / f).unlink()
    if out.exists():
        shutil.rmtree(out)  # an incomplete folder (no metadata.json) from elsewhere
    os.replace(part, out)


# --- reading ------------------------------------------------------------------------------------------------


class TokenData:
    """A built data folder, memory-mapped: epoch index arrays and the (instruction, response) spans of rows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta_file = self.path / "metadata.json"
        if not meta_file.is_file():
            raise ValueError(f"{self.path} has no metadata.json (not built, or half built); fix: hrm-lm data "
                             f"--source ... --out {self.path}")
        self.meta = json.loads(meta_file.read_text())
        self.tokens = np.load(self.path / "tokens.npy", mmap_mode="r")
        self.num_epochs = len(sorted(self.path.glob("epoch_*")))
        if self.num_epochs == 0:
            raise ValueError(f"{self.path} has no epoch_<k>/ folders; fix: rebuild it with hrm-lm data")
        self._epoch: tuple[int, dict[str, np.ndarray]] | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer_info"]["vocab_size"])

    @property
    def context(self) -> int:
        return int(self.meta["max_seq_len"]) - 1

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    def epoch(self, k: int) -> dict[str, np.ndarray]:
        """The index arrays of training epoch k (data epochs are reused in turn when training runs longer)."""
        k %= self.num_epochs
        if self._epoch is None or self._epoch[0] != k:
            ep = self.path / f"epoch_{k}"
            self._epoch = (k, {n: np.load(ep / f"{n}.npy", mmap_mode="r") for n in INDEX_NAMES})
        return self._epoch[1]

    def lengths(self, k: int) -> np.ndarray:
        """Packed length of each row of epoch k: inst_len + resp_len - 1 (the shift drops one token)."""
        e = self.epoch(k)
        return np.asarray(e["inst_len"] + e["resp_len"] - 1, dtype=np.int64)

    def samples(self, k: int, rows: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        e = self.epoch(k)
        out = []
        for i in rows:
            a, n, b, m = (int(e[name][i]) for name in INDEX_NAMES)
            out.append((np.asarray(self.tokens[a:a + n], np.int64), np.asarray(self.tokens[b:b + m], np.int64)))
        return out
