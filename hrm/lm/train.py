"""`hrm-lm train +experiment=hrmtext_demo|hrmtext_L|hrmtext_XL`: HRM-Text pretraining (spec section 4), resumable.

One process on CPU or a GPU, or torchrun / srun ranks with FSDP2: `fully_shard` on every block, then the root,
reshard_after_forward=False, SUM gradient reduction with divide factor 1 and the loss divided by the
all-reduced mean token count (so the update is the reference's); bf16 parameters with fp32 reduction on GPU,
fp32 on CPU (gloo, on an explicit CPU mesh). Every rank packs the same multipack batches, keeping its own bin.

The data position is (epoch, cursor): the epoch's rows [0, cursor) of its shuffled order are consumed. It
does not depend on the world size, so a run saved on 2 ranks resumes on 1 (DCP reshards the weights and the
optimizer state, EMA included) with the next rows, packed for the new world size. SIGTERM / SIGUSR1 save a
checkpoint at the end of the step and exit 3; running the same command resumes.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from omegaconf import DictConfig, OmegaConf

from hrm import dist, runstate
from hrm.data.format import atomic_write_bytes, atomic_write_json
from hrm.errors import debug_enabled, one_line, report
from hrm.lm import checkpoint
from hrm.lm import config as cfg_lm
from hrm.lm.data import TokenData
from hrm.lm.optim import AdamAtan2EMA
from hrm.optim import cosine_schedule_with_warmup_lr
from hrm.track import Tracker, console

ARCH_KEYS = ("hidden_size", "num_heads", "n_layers", "expansion", "H_cycles", "L_cycles", "half_layers", "norm_eps",
             "rope_theta", "net", "bp_warmup_ratio", "attn_backend")


@dataclass
class Position:
    """`step` optimizer steps done; the next batch starts at row `cursor` of training epoch `epoch`."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0
    tokens: int = 0  # real (non-padding) tokens trained on, all ranks


def model_config(cfg: DictConfig, data: TokenData):
    """The LMConfig of this run: SIZES[arch.size] with the arch keys the experiment sets, the data's
    vocabulary (rounded up to 256) and context."""
    from hrm.lm.model import SIZES, lm_config, round_vocab

    arch = cfg.arch
    if arch.size not in SIZES:
        raise ValueError(f"arch.size={arch.size}: choose one of {', '.join(SIZES)}")
    overrides = {k: arch[k] for k in ARCH_KEYS if arch.get(k) is not None}
    return lm_config(str(arch.size), round_vocab(data.vocab_size), max_seq_len=data.context, **overrides)


def check_config(cfg: DictConfig, world_size: int, data: TokenData) -> int:
    """What the data decides (the batch against the ranks and the context), in one line before any compute;
    the keys' own types and ranges are hrm.lm.config's. Returns the per-rank token budget."""
    gbs = int(cfg.global_batch_size)
    if gbs <= 0 or gbs % world_size:
        raise ValueError(f"global_batch_size={gbs} tokens do not split over {world_size} ranks; fix: "
                         f"global_batch_size={max(1, gbs // world_size) * world_size}")
    per_rank = gbs // world_size
    if per_rank < data.context:
        raise ValueError(f"global_batch_size={gbs} gives {per_rank} tokens per rank, fewer than the data's context "
                         f"{data.context} (a full-length row would never fit); fix: global_batch_size="
                         f"{data.context * world_size} or more, or data built with a smaller --context")
    return per_rank


def total_steps(cfg: DictConfig, data: TokenData) -> int:
    """The reference's estimate: epochs x tokens per epoch // global batch (packing loss ignored)."""
    return max(1, int(cfg.epochs) * int(data.meta["total_length"]) // int(cfg.global_batch_size))


def _peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak (hrm/lm/cost.py's table), None on CPU or an unknown card."""
    if device.type != "cuda":
        return None
    from hrm.lm.cost import PEAK_TFLOPS

    name = torch.cuda.get_device_name(device).upper().replace(" ", "")
    hits = [k for k in PEAK_TFLOPS if k in name]
    return PEAK_TFLOPS[max(hits, key=len)] * 1e12 if hits else None


def shard(model: torch.nn.Module, info: dist.DistInfo) -> torch.nn.Module:
    """FSDP2 over all ranks: each block, then the root (embedding, head, leftovers)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))  # explicit: a CPU run on a GPU host stays CPU
    kw = {"mesh": mesh, "reshard_after_forward": False}
    if info.device.type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = [*model.blocks(), model]
    for m in units:
        fully_shard(m, **kw)
    for m in units:  # SUM across ranks; the loss already carries the normalisation (spec section 4)
        if hasattr(m, "set_gradient_divide_factor"):
            m.set_gradient_divide_factor(1.0)
        if hasattr(m, "set_force_sum_reduction_for_comms"):
            m.set_force_sum_reduction_for_comms(True)
    return model


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute each block in the backward instead of keeping its activations (the public run keeps them;
    for 24 GB cards). The blocks' forward is wrapped in place, so parameter names stay as they are."""
    from torch.utils.checkpoint import checkpoint as recompute

    for block in model.blocks():
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return recompute(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def _should_compile(cfg: DictConfig, device: torch.device) -> bool:
    import os

    if str(cfg.compile) == "auto":
        return device.type == "cuda" and not os.environ.get("DISABLE_COMPILE")
    return bool(cfg.compile)


def _names(cfg: DictConfig, info: dist.DistInfo) -> tuple[str, str, Path]:
    """project, run name and run directory, decided on rank 0 and shared (the run name has a clock in it)."""
    names = [None]
    if info.is_main:
        project = cfg.project_name or f"{Path(str(cfg.data_path)).name.capitalize()} HRM-Text"
        run = cfg.run_name or f"{cfg.arch.net}-{cfg.arch.size}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = cfg.checkpoint_path or str(Path("checkpoints") / project.replace(" ", "-") / run)
        names = [(project, run, path)]
    if torch_dist.is_initialized():
        torch_dist.broadcast_object_list(names, src=0)
    project, run, path = names[0]
    return project, run, Path(path)


def _write_run_files(run_dir: Path, cfg: DictConfig, lm_cfg, data: TokenData) -> None:
    """all_config.yaml, lm_config.json and the tokenizer, whether or not W&B is on (eval/export read them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "all_config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    atomic_write_json(run_dir / checkpoint.LM_CONFIG_FILE, asdict(lm_cfg))
    tok = run_dir / "tokenizer"
    if not (tok / "tokenizer.json").is_file() and (data.tokenizer_dir / "tokenizer.json").is_file():
        tmp = run_dir / ".tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(data.tokenizer_dir, tmp)
        tmp.rename(tok)
    info_file = data.path / "tokenizer_info.json"
    if info_file.is_file():
        atomic_write_bytes(run_dir / "tokenizer_info.json", info_file.read_bytes())


def train(cfg: DictConfig) -> int:
    try:
        cfg_lm.check(cfg)
        info = dist.setup(str(cfg.device))
    except ValueError as e:
        report("hrm-lm train", one_line(e))
        return 2
    run_dir = None
    try:
        project, run_name, run_dir = _names(cfg, info)
        return _train(cfg, info, project, run_name, run_dir)
    except ValueError as e:  # bad input, found before any compute
        report("hrm-lm train", one_line(e))
        return 2
    except (Exception, KeyboardInterrupt) as e:
        if debug_enabled():
            raise
        reason = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else one_line(e)
        if run_dir is not None and info.is_main and run_dir.is_dir():
            runstate.mark_failed(run_dir, reason)
        report("hrm-lm train", reason if isinstance(e, KeyboardInterrupt) else f"{reason} (run {run_dir})")
        return 1
    finally:
        dist.teardown()


def _train(cfg: DictConfig, info: dist.DistInfo, project: str, run_name: str, run_dir: Path) -> int:
    from hrm.lm.model import bp_steps_at, build_lm, lm_loss
    from hrm.lm.packing import multipack, pack

    data = TokenData(Path(str(cfg.data_path)))
    per_rank = check_config(cfg, info.world_size, data)
    lm_cfg = model_config(cfg, data)
    steps_total = total_steps(cfg, data)
    limit = min(steps_total, int(cfg.max_steps)) if cfg.max_steps is not None else steps_total
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_stale(run_dir)
        _write_run_files(run_dir, cfg, lm_cfg, data)
    dist.barrier()

    torch.manual_seed(int(cfg.seed))  # the same initial weights on every rank; FSDP2 keeps each its shard
    model = build_lm(lm_cfg, device=info.device)
    n_params = model.num_params()
    if cfg.activation_checkpointing:
        checkpoint_activations(model)
    if info.world_size > 1:
        model = shard(model, info)
    optim = AdamAtan2EMA(model.parameters(), lr=float(cfg.lr), betas=(float(cfg.beta1), float(cfg.beta2)),
                         weight_decay=float(cfg.weight_decay), ema=cfg.ema)
    pos = Position()
    torch.manual_seed(int(cfg.seed) + 1000003 * info.rank)  # per-rank streams from here on (training draws none)
    resume = checkpoint.latest_step(run_dir)
    if resume is not None:
        state = checkpoint.load(run_dir, resume, model, optim, info, reseed=int(cfg.seed))
        pos = Position(**state["position"])
        if info.is_main:
            console.print(f"resumed at step {pos.step} (epoch {pos.epoch}, row {pos.cursor}) from "
                          f"{run_dir / f'step_{resume}'}, saved on {state['world_size']} rank(s), now "
                          f"{info.world_size}")
    if _should_compile(cfg, info.device):
        for block in model.blocks():
            block.compile(dynamic=False)

    tracker = Tracker(run_dir, OmegaConf.to_container(cfg, resolve=True), project, run_name, str(cfg.wandb_mode),
                      enabled=info.is_main, resume_step=pos.step if resume is not None else None)
    if info.is_main and resume is None:
        tracker.log({"num_params": n_params, "non_embedding_params": model.num_params(non_embedding=True)}, step=0)
        console.print(f"{lm_cfg.net} {cfg.arch.size}: {n_params / 1e6:.2f}M parameters, {steps_total} steps of "
                      f"{int(cfg.global_batch_size)} tokens on {info.world_size} rank(s); run {run_dir}")
    peak = _peak_flops(info.device)
    from hrm.lm.cost import flops_per_token

    stop = runstate.StopSignal().install()
    keep = int(cfg.keep_checkpoints)

    def train_state() -> dict:
        return {"position": asdict(pos), "total_steps": steps_total, "lm_config": asdict(lm_cfg)}

    saved_step = resume

    def save() -> None:
        nonlocal saved_step
        checkpoint.save(run_dir, pos.step, model, optim, train_state(), info, keep=keep)
        saved_step = pos.step

    def status(name: str, **extra) -> None:
        if info.is_main:
            runstate.write_status(run_dir, name, pos.step, steps_total, limit=limit, tokens=pos.tokens, **extra)

    status("running")
    acc = torch.zeros(3, dtype=torch.float64, device=info.device)  # this rank's loss sum, correct, label count
    t_log, steps_logged, last_save, tokens_logged = time.time(), 0, time.time(), pos.tokens
    interrupted = epochs_done = False
    lengths_epoch, lengths = -1, None
    try:
        while pos.step < limit:
            if lengths_epoch != pos.epoch:
                lengths, lengths_epoch = data.lengths(pos.epoch), pos.epoch
            bins, nxt = multipack(lengths, pos.cursor, per_rank, info.world_size)
            if not bins or any(len(b) == 0 for b in bins):  # the epoch's rows are used up (last batch dropped)
                pos.epoch, pos.cursor = pos.epoch + 1, 0
                if pos.epoch >= int(cfg.epochs):
                    epochs_done = True
                    break
                continue
            batch = pack(data.samples(pos.epoch, bins[info.rank]), per_rank).to(info.device)
            bp = bp_steps_at(pos.step, steps_total, float(lm_cfg.bp_warmup_ratio))
            lr = cosine_schedule_with_warmup_lr(pos.step + 1, float(cfg.lr), int(cfg.lr_warmup_steps), steps_total,
                                                float(cfg.lr_min_ratio))
            for group in optim.param_groups:
                group["lr"] = lr
            logits = model(batch, bp_steps=bp)
            loss_sum, count = lm_loss(logits, batch.labels)
            counts = torch.stack([count.detach().to(torch.float64),  # labels and real tokens, all ranks
                                  torch.tensor(float(batch.total_seqlen), dtype=torch.float64, device=info.device)])
            if torch_dist.is_initialized():
                torch_dist.all_reduce(counts)
            mean_count = (counts[0] / info.world_size).clamp_min(1.0)
            (loss_sum / mean_count.to(loss_sum.dtype)).backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            with torch.no_grad():
                mask = batch.labels != -100
                correct = (logits.argmax(-1)[mask] == batch.labels[mask]).sum()
                acc += torch.stack([loss_sum.detach().double(), correct.double(), count.double()])
            pos.tokens += int(counts[1].item())  # host sync; the stop flags below sync every step anyway
            pos.step += 1
            pos.cursor = nxt
            steps_logged += 1
            if pos.step % int(cfg.log_every) == 0 or pos.step == limit:
                if torch_dist.is_initialized():
                    torch_dist.all_reduce(acc)
                loss_v, correct_v, labels_v = acc.tolist()
                toks_v = pos.tokens - tokens_logged
                tokens_logged = pos.tokens
                dt = max(time.time() - t_log, 1e-9)
                tok_s = toks_v / dt
                row = {"train/lm_loss": loss_v / max(labels_v, 1.0), "train/accuracy": correct_v / max(labels_v, 1.0),
                       "train/lr": lr, "train/bp_steps": bp, "train/epoch": pos.epoch, "train/tokens": pos.tokens,
                       "perf/tokens_per_s": tok_s, "perf/step_s": dt / steps_logged}
                achieved = tok_s * flops_per_token(lm_cfg, bp_steps=bp)["total"]  # spec 4's 2ND + 4ND x steps
                row["perf/tflops"] = achieved / 1e12
                if peak is not None:
                    row["perf/mfu"] = achieved / (peak * info.world_size)
                tracker.log(row, step=pos.step)
                if info.is_main:
                    console.print(f"step {pos.step}/{limit} loss {row['train/lm_loss']:.4f} acc "
                                  f"{row['train/accuracy']:.3f} bp {bp} lr {lr:.2e} {tok_s:,.0f} tok/s"
                                  + (f" MFU {row['perf/mfu']:.1%}" if "perf/mfu" in row else ""))
                acc.zero_()
                t_log, steps_logged = time.time(), 0
                status("running")
            every = int(cfg.checkpoint_every_steps or 0)
            due = (every > 0 and pos.step % every == 0) or (
                time.time() - last_save > 60 * float(cfg.state_every_minutes))
            stop_now, save_now = dist.all_reduce_flags([stop.requested, due], info.device)
            if stop_now:
                interrupted = True
                break
            if save_now and pos.step < limit:
                save()
                last_save = time.time()
    finally:
        stop.uninstall()
    if saved_step != pos.step:
        save()
    if interrupted:
        status("interrupted")
        if info.is_main:
            console.print(f"[yellow]{stop.received}: checkpoint saved at step {pos.step}; run the same command "
                          f"to resume[/]")
        tracker.finish()
        return runstate.EXIT_INTERRUPTED
    if pos.step >= steps_total or epochs_done:
        status("finished")
        if info.is_main:
            console.print(f"done at step {pos.step}/{steps_total}; checkpoint {run_dir / f'step_{pos.step}'}")
    else:
        status("stopped", reason=f"max_steps={cfg.max_steps}")
        if info.is_main:
            console.print(f"stopped at step {pos.step}/{steps_total} (max_steps={cfg.max_steps}); checkpoint "
                          f"{run_dir / f'step_{pos.step}'}")
    tracker.finish()
    return 0


def main(argv: list[str] | None = None) -> None:
    """`hrm-lm train KEY=VALUE ...`: configs/lm composed with the overrides (one line on a bad one), then train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print("usage: hrm-lm train +experiment=hrmtext_demo|hrmtext_L|hrmtext_XL [KEY=VALUE ...]\n"
              f"keys (configs/lm/cfg_lm.yaml): {', '.join(cfg_lm.keys())}")
        sys.exit(0)
    try:
        cfg = cfg_lm.compose(argv)
    except ValueError as e:
        report("hrm-lm train", one_line(e))
        sys.exit(2)
    code = train(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()

