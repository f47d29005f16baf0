"""HRM ACT v1: the inner recurrent model (slow H module, fast L module) and the adaptive-halting wrapper.

Attribute names follow the reference's module tree (`inner.H_level.layers.0.self_attn.qkv_proj`, ...)
so that checkpoints move between the two implementations unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from hrm.model.layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    CosSin,
    RotaryEmbedding,
    SwiGLU,
    rms_norm,
    trunc_normal_init_,
)
from hrm.model.puzzle_embedding import CastedSparseEmbedding

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass
class HRMConfig:
    batch_size: int
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    puzzle_emb_ndim: int = 512
    H_cycles: int = 2
    L_cycles: int = 2
    H_layers: int = 4
    L_layers: int = 4
    hidden_size: int = 512
    expansion: float = 4.0
    num_heads: int = 8
    pos_encodings: str = "rope"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "bfloat16"
    attn_backend: str = "sdpa"  # already resolved (see layers.resolve_attn_backend)
    grad_mode: str = "one_step"  # one_step|full|sqrt (see hrm.model.sqrt_bptt)
    grad_window: int | None = None  # full/sqrt: differentiate only the last K module applications
    memory_limit_mb: float | None = None  # sqrt: pick the stretch length so activations fit this

    @classmethod
    def from_arch(cls, arch: dict, **runtime) -> HRMConfig:
        """Build from the `arch` config section; unknown keys (name, loss, ...) are not model fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in arch.items() if k in names}, **runtime)

    def validate(self) -> None:
        if self.pos_encodings not in ("rope", "learned"):
            raise ValueError(f"arch.pos_encodings={self.pos_encodings!r} is not supported: use rope or learned")
        if self.forward_dtype not in DTYPES:
            raise ValueError(f"arch.forward_dtype={self.forward_dtype!r}: use bfloat16 or float32")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"arch.hidden_size={self.hidden_size} is not divisible by arch.num_heads={self.num_heads}")
        for key in ("H_cycles", "L_cycles", "H_layers", "L_layers", "halt_max_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"arch.{key} must be >= 1, got {getattr(self, key)}")
        from hrm.grad_settings import validate_grad_settings

        validate_grad_settings(self.grad_mode, self.grad_window, self.memory_limit_mb,
                               self.H_cycles, self.L_cycles)


@dataclass
class InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor


@dataclass
class ACTCarry:
    inner_carry: InnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


class Block(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, config: HRMConfig):
        super().__init__()
        head_dim = config.hidden_size // config.num_heads
        self.self_attn = Attention(config.hidden_size, head_dim, config.num_heads, config.num_heads,
                                   causal=False, backend=config.attn_backend)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin: CosSin | None, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin, hidden_states), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class ReasoningModule(nn.Module):
    def __init__(self, config: HRMConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(num_layers))

    def forward(self, z: torch.Tensor, injection: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        h = z + injection
        for layer in self.layers:
            h = layer(cos_sin, h)
        return h


class HRMInner(nn.Module):
    def __init__(self, config: HRMConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.forward_dtype = DTYPES[config.forward_dtype]
        D = config.hidden_size
        self.embed_scale = math.sqrt(D)
        embed_std = 1.0 / self.embed_scale

        self.embed_tokens = CastedEmbedding(config.vocab_size, D, init_std=embed_std, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(D, config.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)

        self.puzzle_emb_len = -(config.puzzle_emb_ndim // -D)  # ceil
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim,
                                                    batch_size=config.batch_size, init_std=0,
                                                    cast_to=self.forward_dtype)
        total_len = config.seq_len + self.puzzle_emb_len
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(D // config.num_heads, total_len, config.rope_theta)
        else:
            self.embed_pos = CastedEmbedding(total_len, D, init_std=embed_std, cast_to=self.forward_dtype)

        self.H_level = ReasoningModule(config, config.H_layers)
        self.L_level = ReasoningModule(config, config.L_layers)

        # Fixed (never trained) initial states, broadcast over all positions.
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(D, dtype=self.forward_dtype), std=1))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(D, dtype=self.forward_dtype), std=1))

        # Q head starts near "never halt": zero weights, both logits at -5.
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    @property
    def total_seq_len(self) -> int:
        return self.config.seq_len + self.puzzle_emb_len

    def cos_sin(self) -> CosSin | None:
        return self.rotary_emb() if hasattr(self, "rotary_emb") else None

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            puzzle = self.puzzle_emb(puzzle_identifiers)
            pad = self.puzzle_emb_len * self.config.hidden_size - puzzle.shape[-1]
            if pad > 0:
                puzzle = nn.functional.pad(puzzle, (0, pad))
            puzzle = puzzle.view(-1, self.puzzle_emb_len, self.config.hidden_size)
            embedding = torch.cat((puzzle, embedding), dim=-2)
        if self.config.pos_encodings == "learned":
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * embedding

    def empty_carry(self, batch_size: int, device: torch.device | None = None) -> InnerCarry:
        shape = (batch_size, self.total_seq_len, self.config.hidden_size)
        device = device if device is not None else self.H_init.device
        return InnerCarry(z_H=torch.empty(shape, dtype=self.forward_dtype, device=device),
                          z_L=torch.empty(shape, dtype=self.forward_dtype, device=device))

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        mask = reset.view(-1, 1, 1)
        return InnerCarry(z_H=torch.where(mask, self.H_init, carry.z_H),
                          z_L=torch.where(mask, self.L_init, carry.z_L))

    def reason(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
               cos_sin: CosSin | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment: H_cycles x L_cycles updates, differentiating only the final L and H step."""
        if self.config.grad_mode != "one_step":
            from hrm.model.sqrt_bptt import reason_segment

            return reason_segment(self, z_H, z_L, x, cos_sin)
        H_cycles, L_cycles = self.config.H_cycles, self.config.L_cycles
        with torch.no_grad():
            for h in range(H_cycles):
                for l in range(L_cycles):
                    if not (h == H_cycles - 1 and l == L_cycles - 1):
                        z_L = self.L_level(z_L, z_H + x, cos_sin)
                if h != H_cycles - 1:
                    z_H = self.H_level(z_H, z_L, cos_sin)
        assert not z_H.requires_grad and not z_L.requires_grad
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)
        return z_H, z_L

    def forward(self, carry: InnerCarry, batch: dict[str, torch.Tensor]
                ) -> tuple[InnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = self.reason(carry.z_H, carry.z_L, x, cos_sin)
        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, logits, (q[..., 0], q[..., 1])


class HierarchicalReasoningModel_ACTV1(nn.Module):
    """ACT wrapper: one call = one segment for every row; halted rows are refilled from the new batch."""

    def __init__(self, config: HRMConfig):
        super().__init__()
        self.config = config
        self.inner = HRMInner(config)

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ACTCarry:
        B = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            inner_carry=self.inner.empty_carry(B, device),
            steps=torch.zeros(B, dtype=torch.int32, device=device),
            halted=torch.ones(B, dtype=torch.bool, device=device),  # all rows start by being reset
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: ACTCarry, batch: dict[str, torch.Tensor]) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        halted = carry.halted
        inner_carry = self.inner.reset_carry(halted, carry.inner_carry)
        steps = torch.where(halted, 0, carry.steps)
        # Rows that did not halt keep their data: the new batch's rows at those slots are discarded.
        current_data = {k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
                        for k, v in carry.current_data.items()}

        inner_carry, logits, (q_halt, q_continue) = self.inner(inner_carry, current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= self.config.halt_max_steps
            halted = is_last
            if self.training and self.config.halt_max_steps > 1:
                halted = halted | (q_halt > q_continue)
                # Exploration, re-drawn every step: sometimes forbid halting before a random minimum.
                explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
                min_halt = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (steps >= min_halt)
                # Bootstrapped target for Q-continue from a second forward of the post-step carry.
                next_q_halt, next_q_continue = self.inner(inner_carry, current_data)[-1]
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last, next_q_halt, torch.maximum(next_q_halt, next_q_continue)))

        return ACTCarry(inner_carry, steps, halted, current_data), outputs
