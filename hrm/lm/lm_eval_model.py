"""HRM-Text as an lm-eval model: the request's context is the bidirectional prefix, the answer the response.

The public harness prompts as BOQ + condition tokens + prompt + EOQ and reads the answer the model writes
after EOQ (spec section 6). Here the same prompt is the PrefixLM instruction, so
- loglikelihood(context, continuation): the continuation is scored as the response (its leading
  whitespace stripped by default: a response starts right after EOQ, without a space);
- generate_until(context, gen_kwargs): greedy decoding of the response, stopping at EOA, at any `until`
  string or after max_gen_toks; there is no KV cache, each new token re-runs the packed batch (fine for
  small models and checks, slow for long chains of thought on a real run);
- loglikelihood_rolling(text): the text as a causal response after a prompt of BOQ + EOQ.
Requests are packed together into one 1-D PackedBatch per forward, as in training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lm_eval.api.model import LM

from hrm.lm.data import TOKENIZER_INFO, load_tokenizer, special_ids
from hrm.lm.packing import pack

__all__ = ["HRMTextLM", "PromptFormat", "greedy", "load_tokenizer", "prompt_format", "score"]

@dataclass
class PromptFormat:
    """Token ids of the prompt frame: instruction = BOQ, condition tokens, text, EOQ; response ends in EOA."""

    boq: int
    eoq: int
    eoa: int
    conditions: dict[str, int] = field(default_factory=dict)

    def instruction(self, text_ids: Sequence[int], condition: str, room: int) -> list[int]:
        """The prompt's ids, its text cut from the left to `room` tokens in all (the frame is kept)."""
        head = [self.boq] + [self.condition_id(c) for c in condition.split(",") if c.strip()]
        keep = max(room - len(head) - 1, 1)
        return head + list(text_ids)[-keep:] + [self.eoq]

    def condition_id(self, tag: str) -> int:
        tag = tag.strip()
        if tag not in self.conditions:
            raise ValueError(f"condition '{tag}' is not in the tokenizer's condition mapping "
                             f"({', '.join(self.conditions) or 'none'}); fix: condition=one of those")
        return self.conditions[tag]


def prompt_format(tokenizer: Any, special: dict[str, Any] | None = None) -> PromptFormat:
    """The prompt frame's ids from a run's tokenizer_info (token names; data_io's defaults when None)."""
    boq, eoq, eoa, conds = special_ids(tokenizer, {**TOKENIZER_INFO, **(special or {})})
    return PromptFormat(boq, eoq, eoa, conds)


# --- the model-side work, independent of lm-eval ----------------------------------------------------------


def _batches(samples: list[tuple[np.ndarray, np.ndarray]], budget: int) -> Iterable[list[int]]:
    """Indices of samples, grouped so that each group's packed length (inst + resp - 1) fits `budget`."""
    group: list[int] = []
    used = 0
    for i, (inst, resp) in enumerate(samples):
        n = len(inst) + len(resp) - 1
        if group and used + n > budget:
            yield group
            group, used = [], 0
        group.append(i)
        used += n
    if group:
        yield group


def _packed_length(samples: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """The stream length of one pack: what the samples need, rounded up to 64 (a few shapes, not one each)."""
    need = sum(len(a) + len(b) - 1 for a, b in samples)
    return -(-need // 64) * 64


@torch.inference_mode()
def score(model: torch.nn.Module, samples: list[tuple[np.ndarray, np.ndarray]], budget: int = 2048,
          device: Any = None) -> list[tuple[float, bool]]:
    """For each (instruction ids, response ids): the response's summed log-probability and whether greedy
    decoding would produce it. Response tokens are the only labels, one per response token."""
    out: list[tuple[float, bool]] = [(0.0, False)] * len(samples)
    device = device or next(model.parameters()).device
    for group in _batches(samples, budget):
        chunk = [(np.asarray(samples[i][0], np.int64), np.asarray(samples[i][1], np.int64)) for i in group]
        batch = pack(chunk, _packed_length(chunk)).to(device)
        logits = model(batch).float()
        labels = batch.labels.to(logits.device)
        where = (labels != -100).nonzero().squeeze(-1)
        logp = torch.log_softmax(logits[where], dim=-1)
        target = labels[where]
        tok_lp = logp.gather(-1, target[:, None]).squeeze(-1)
        hit = logp.argmax(-1) == target
        start = 0
        for i, (_, resp) in zip(group, chunk):
            n = len(resp)
            out[i] = (float(tok_lp[start:start + n].sum()), bool(hit[start:start + n].all()))
            start += n
        if start != len(where):
            raise RuntimeError(f"packing kept {len(where)} labels for {start} response tokens")
    return out


@torch.inference_mode()
def greedy(model: torch.nn.Module, prompts: list[np.ndarray], max_new: list[int], stop_ids: set[int],
           budget: int = 2048, device: Any = None, stop_check: Any = None) -> list[list[int]]:
    """Greedy responses for PrefixLM prompts: every still-running prompt is re-packed with its response so
    far plus one placeholder, and the logits at the placeholder's input (the last real token) give the next
    token. Stops at a token in `stop_ids` (not returned), at max_new, or when stop_check(i, ids) is true."""
    device = device or next(model.parameters()).device
    gen: list[list[int]] = [[] for _ in prompts]
    running = [i for i in range(len(prompts)) if max_new[i] > 0]
    while running:
        samples = [(np.asarray(prompts[i], np.int64), np.asarray(gen[i] + [0], np.int64)) for i in running]
        nxt: dict[int, int] = {}
        for group in _batches(samples, budget):
            chunk = [samples[g] for g in group]
            batch = pack(chunk, _packed_length(chunk)).to(device)
            logits = model(batch)
            ends = np.cumsum([len(a) + len(b) - 1 for a, b in chunk]) - 1
            picks = logits[torch.as_tensor(ends, device=logits.device)].argmax(-1).tolist()
            for g, t in zip(group, picks):
                nxt[running[g]] = int(t)
        still = []
        for i in running:
            t = nxt[i]
            if t in stop_ids:
                continue
            gen[i].append(t)
            if len(gen[i]) >= max_new[i] or (stop_check is not None and stop_check(i, gen[i])):
                continue
            still.append(i)
        running = still
    return gen


# --- the lm-eval model --------------------------------------------------------------------------------------


class HRMTextLM(LM):
    """lm-eval's LM over an LMModel. `condition` is the comma list of condition tags put after BOQ
    ("direct" for the MCQ tasks, "synth,cot" for GSM8k/MATH, as the public harness does)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, fmt: PromptFormat, max_seq_len: int,
                 condition: str = "direct", batch_tokens: int = 4096, strip_continuation: bool = True,
                 max_gen_toks: int = 256) -> None:
        super().__init__()
        self.model = model.eval()
        self.tok = tokenizer
        self.fmt = fmt
        self.max_seq_len = int(max_seq_len)
        self.condition = condition
        self.batch_tokens = int(batch_tokens)
        self.strip_continuation = strip_continuation
        self.max_gen_toks = int(max_gen_toks)
        for tag in condition.split(","):
            if tag.strip():
                fmt.condition_id(tag)  # a bad tag fails here, before any request runs

    def _ids(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def _prompt(self, context: str, room: int) -> list[int]:
        return self.fmt.instruction(self._ids(context.strip()), self.condition, room)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        samples = []
        for req in requests:
            context, continuation = req.args
            if self.strip_continuation:
                continuation = continuation.lstrip()
            resp = self._ids(continuation) or [self.fmt.eoa]
            resp = resp[: self.max_seq_len - 3]
            inst = self._prompt(context, self.max_seq_len + 1 - len(resp))
            samples.append((np.asarray(inst), np.asarray(resp)))
        return score(self.model, samples, self.batch_tokens)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text in windows of max_seq_len - 2 tokens, each a causal response after BOQ + EOQ."""
        samples, owner = [], []
        window = self.max_seq_len - 2
        for k, req in enumerate(requests):
            ids = self._ids(req.args[0])
            for s in range(0, max(len(ids), 1), window):
                part = ids[s:s + window] or [self.fmt.eoa]
                samples.append((np.asarray([self.fmt.boq, self.fmt.eoq]), np.asarray(part)))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owner, score(self.model, samples, self.batch_tokens)):
            totals[k] += lp
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        prompts, max_new, untils = [], [], []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            untils.append([until] if isinstance(until, str) else list(until))
            n = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = self._prompt(context, self.max_seq_len - n)
            prompts.append(np.asarray(prompt))
            max_new.append(max(0, min(n, self.max_seq_len + 1 - len(prompt))))

        def stop(i: int, ids: list[int]) -> bool:
            text = self.tok.decode(ids)
            return any(u and u in text for u in untils[i])

        outs = greedy(self.model, prompts, max_new, {self.fmt.eoa}, self.batch_tokens, stop_check=stop)
        texts = []
        for ids, until in zip(outs, untils):
            text = self.tok.decode(ids)
            for u in until:
                if u and u in text:
                    text = text.split(u, 1)[0]
            texts.append(text)
        return texts
