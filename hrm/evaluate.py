"""Evaluation (§7.1): every test batch runs halt_max_steps segments; `hrm-evaluate checkpoint=PATH`.

`hrm-evaluate` reads `all_config.yaml` beside the checkpoint (ours or the reference's), evaluates on the
test split and writes `step_N_all_preds.{rank}` with the reference's keys, plus `step_N_eval.json`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist
from omegaconf import OmegaConf
from rich.table import Table

from hrm import dist
from hrm.track import console

REFERENCE_SAVE_OUTPUTS = ["inputs", "labels", "puzzle_identifiers", "logits", "q_halt_logits", "q_continue_logits"]


def evaluate(model: torch.nn.Module, dataset, info: dist.DistInfo, save_outputs: list[str] | tuple = (),
             max_batches: int | None = None) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """Metrics per set ({set: {metric: value}}, on rank 0; None elsewhere) and this rank's saved outputs."""
    sets = list(dataset.metadata.sets)
    keys: list[str] | None = None
    totals = None
    saved: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i, (set_name, batch, _) in enumerate(dataset.test_batches()):
            if max_batches is not None and i >= max_batches:
                break
            batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
            carry = model.initial_carry(batch)
            while True:
                carry, _, metrics, preds, all_halted = model(carry=carry, batch=batch, return_keys=tuple(save_outputs))
                if all_halted:
                    break
            for source in (batch, preds):
                for k, v in source.items():
                    if k in save_outputs:
                        saved.setdefault(k, []).append(v.cpu())
            if keys is None:
                keys = sorted(metrics)
                totals = torch.zeros(len(sets), len(keys), dtype=torch.float64, device=info.device)
            totals[sets.index(set_name)] += torch.stack([metrics[k].to(torch.float64) for k in keys])
    model.train(was_training)
    outputs = {k: torch.cat(v) for k, v in saved.items()}
    if totals is None:
        return ({} if info.is_main else None), outputs
    if torch_dist.is_initialized():
        torch_dist.reduce(totals, dst=0)
    if not info.is_main:
        return None, outputs
    result = {}
    for s, set_name in enumerate(sets):
        row = dict(zip(keys, totals[s].tolist()))
        count = max(row["count"], 1)
        result[set_name] = {k: v / count for k, v in row.items()}
    return result, outputs


def metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("set")
    names = sorted({k for v in metrics.values() for k in v})
    for name in names:
        table.add_column(name, justify="right")
    for set_name, values in metrics.items():
        table.add_row(set_name, *(f"{values.get(n, float('nan')):.4f}" for n in names))
    return table


def _parse_args(argv: list[str]) -> dict:
    if any(a in ("-h", "--help") for a in argv):
        print("usage: hrm-evaluate checkpoint=RUN_DIR/step_N [data_path=...] [global_batch_size=...] "
              "[device=cpu|cuda] [eval_max_batches=N] [eval_save_outputs=[...]] [arc_vote=true]")
        sys.exit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"argument {bad[0]!r} is not key=value: use hrm-evaluate checkpoint=PATH [key=value ...]")
    return OmegaConf.to_container(OmegaConf.from_dotlist(argv))


def run(argv: list[str]) -> int:
    from hrm.config import default_config
    from hrm.data.format import atomic_write_json, validate_dataset
    from hrm.data.loader import PuzzleDataset
    from hrm.model import build_model, load_weights
    from hrm.runstate import atomic_torch_save

    args = _parse_args(argv)
    ckpt = args.pop("checkpoint", None)
    arc_vote = bool(args.pop("arc_vote", False))
    if not ckpt:
        raise ValueError("missing checkpoint=PATH: point it at a step_N file inside a run directory")
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ValueError(f"checkpoint {ckpt} not found: pass a step_N file of a run directory")
    config_file = ckpt.parent / "all_config.yaml"
    if not config_file.is_file():
        raise ValueError(f"{config_file} not found: hrm-evaluate needs the run's all_config.yaml beside the checkpoint")
    cfg = OmegaConf.merge(default_config(), OmegaConf.load(config_file), OmegaConf.create(args))
    info = dist.setup(cfg.device)
    if cfg.global_batch_size % info.world_size:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} is not divisible by {info.world_size} ranks")
    validate_dataset(Path(cfg.data_path), splits=("test",))
    dataset = PuzzleDataset(cfg.data_path, "test", cfg.global_batch_size, rank=info.rank,
                            world_size=info.world_size, seed=cfg.seed, test_set_mode=True)
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    model = build_model(arch, dataset.metadata, cfg.global_batch_size // info.world_size, info.device)
    load_weights(model, torch.load(ckpt, map_location=info.device, weights_only=True), str(ckpt))
    match = re.fullmatch(r"step_(\d+)", ckpt.name)
    step = int(match.group(1)) if match else 0
    save_outputs = list(args.get("eval_save_outputs") or REFERENCE_SAVE_OUTPUTS)
    if info.is_main:
        console.print(f"evaluating {ckpt} on {cfg.data_path} (test) with {info.world_size} rank(s) on "
                      f"{info.device}, attention {model.model.inner.H_level.layers[0].self_attn.backend}")
    metrics, outputs = evaluate(model, dataset, info, save_outputs, cfg.eval_max_batches)
    if outputs:
        atomic_torch_save(outputs, ckpt.parent / f"step_{step}_all_preds.{info.rank}")
    dist.barrier()
    if info.is_main:
        atomic_write_json(ckpt.parent / f"step_{step}_eval.json", {"step": step, "metrics": metrics})
        console.print(metrics_table(metrics, f"evaluation of {ckpt.name}"))
        if arc_vote:
            from hrm.arc_vote import vote

            vote(ckpt.parent / f"step_{step}_all_preds", cfg.data_path,
                 output_json=ckpt.parent / f"step_{step}_arc_vote.json")
    dist.teardown()
    return 0


def main(argv: list[str] | None = None) -> int:
    from hrm.data.format import DatasetError

    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (ValueError, DatasetError) as e:
        print(f"hrm-evaluate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
