"""Vector quantization: nearest codebook vector, losses, straight-through, codebook health.

The quantizer follows VQ-VAE (van den Oord et al. 2017) with the EMA codebook of
VQ-VAE-2 (Razavi et al. 2019, App. A). Two health measures keep the codebook in use:
the codebook is seeded from the first training batch (``data_init``), and codes unused
for ``dead_after`` training steps are re-seeded from recent encoder outputs.

Codebook state changes only in training mode, so ``nearest``/``lookup`` and the eval-mode
forward are pure functions of the weights (what compression relies on).
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

_USAGE_DECAY = 0.99  # horizon of ~100 steps for the perplexity estimate
_RECENT_PER_CODE = 2  # restart pool holds this many recent encoder vectors per code
_DISTANCE_ELEMENTS = 1 << 24  # largest distance matrix nearest() builds at once


class QuantizerOutput(NamedTuple):
    """Result of :meth:`VectorQuantizer.forward`.

    quantized: (B, D, h, w) float32, equal to the chosen codebook vectors; its gradient
        flows straight through to the input z.
    symbols: (B, h, w) int64 codebook indices.
    loss: () float32, codebook loss (only when ema=False) + commitment_weight * commitment loss.
    """

    quantized: Tensor
    symbols: Tensor
    loss: Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_(tensor: Tensor) -> Tensor:
    """Sum over ranks in place, so every DDP replica applies the same codebook update."""
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def _broadcast_(tensor: Tensor) -> Tensor:
    """Take rank 0's values in place, so random choices agree across replicas."""
    if _distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def _flatten(z: Tensor) -> Tensor:
    """(B, D, h, w) -> (B*h*w, D) float32."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()


def _sample_rows(pool: Tensor, n: int) -> Tensor:
    """n rows of pool (m, D), distinct while m >= n; repeats get a little noise so codes differ."""
    m = pool.shape[0]
    if m >= n:
        return pool[torch.randperm(m, device=pool.device)[:n]].clone()
    index = torch.randint(m, (n,), device=pool.device)
    index[:m] = torch.randperm(m, device=pool.device)
    rows = pool[index].clone()
    noise = 1e-3 * (pool.std() + 1e-6) * torch.randn_like(rows[m:])
    rows[m:] += noise
    return rows


class VectorQuantizer(nn.Module):
    """Maps each D-vector of a feature map to the nearest of K codebook vectors.

    z (B, D, h, w) ──nearest──► symbols (B, h, w) ──lookup──► quantized (B, D, h, w)

    Args:
        dim: D, length of a codebook vector.
        codebook_size: K, number of codes.
        commitment_weight: beta of the commitment loss (VQ-VAE uses 0.25).
        ema: update the codebook by exponential moving averages instead of gradients.
        decay: EMA decay (VQ-VAE-2 uses 0.99).
        epsilon: Laplace smoothing of the EMA cluster sizes (avoids division by zero).
        data_init: seed the codebook with encoder outputs of the first training batch.
        dead_after: re-seed codes unused for this many training steps (0 disables).
    """

    # Buffers a model file may leave out (checkpoint.save_model(compact=True)): loading rebuilds them.
    REBUILT_ON_LOAD = ("embed_sum",)

    codebook: Tensor  # (K, D): a buffer with EMA, a parameter without
    cluster_size: Tensor  # (K,) EMA of assignment counts (EMA only)
    embed_sum: Tensor  # (K, D) EMA of assigned vector sums (EMA only)
    initialized: Tensor  # () bool
    step: Tensor  # () int64, training steps seen
    last_used: Tensor  # (K,) int64, step of the last assignment, -1 never
    seeded_at: Tensor  # (K,) int64, step of the last (re)seeding
    usage_ema: Tensor  # (K,) EMA of assignment frequencies
    recent: Tensor  # (R, D) restart pool of recent encoder vectors (not saved)
    recent_count: Tensor  # () int64, vectors written to the pool so far (not saved)

    def __init__(self, dim: int, codebook_size: int, *, commitment_weight: float = 0.25,
                 ema: bool = True, decay: float = 0.99, epsilon: float = 1e-5,
                 data_init: bool = True, dead_after: int = 200) -> None:
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.commitment_weight, self.ema, self.decay, self.epsilon = commitment_weight, ema, decay, epsilon
        self.data_init, self.dead_after = data_init, dead_after
        codebook = torch.randn(codebook_size, dim)
        if ema:
            self.register_buffer("codebook", codebook)
            # EMA state starts as "each code saw itself once": unused codes then stay put
            # instead of being divided by a near-zero cluster size.
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("initialized", torch.tensor(not data_init))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_used", torch.full((codebook_size,), -1, dtype=torch.int64))
        self.register_buffer("seeded_at", torch.zeros(codebook_size, dtype=torch.int64))
        self.register_buffer("usage_ema", torch.zeros(codebook_size))
        # The restart pool is transient: it refills within a few steps after a resume.
        capacity = _RECENT_PER_CODE * codebook_size
        self.register_buffer("recent", torch.zeros(capacity, dim), persistent=False)
        self.register_buffer("recent_count", torch.zeros((), dtype=torch.int64), persistent=False)

    # ------------------------------------------------------------------ pure lookups

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code (L2) for every vector; no side effects.

        z: (B, D, h, w) float (any dtype; distances are computed in float32).
        Returns (B, h, w) int64.
        """
        b, _, h, w = z.shape
        return self._nearest_flat(_flatten(z)).view(b, h, w)

    def _nearest_flat(self, flat: Tensor) -> Tensor:
        """(N, D) float32 -> (N,) int64."""
        symbols = [distances.argmin(1) for distances in self._distance_chunks(flat)]
        return torch.cat(symbols) if symbols else flat.new_zeros(0, dtype=torch.int64)

    def nearest_k(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k nearest codes of every vector, nearest first; no side effects, no gradient.

        z: (B, D, h, w) float. Returns indices (B, k, h, w) int64 and their squared distances
        (B, k, h, w) float32.
        """
        b, _, h, w = z.shape
        flat = _flatten(z)
        found = [distances.topk(k, dim=1, largest=False) for distances in self._distance_chunks(flat)]
        distances = torch.cat([f.values for f in found]) if found else flat.new_zeros(0, k)
        indices = torch.cat([f.indices for f in found]) if found else flat.new_zeros(0, k, dtype=torch.int64)
        return (indices.view(b, h, w, k).permute(0, 3, 1, 2), distances.view(b, h, w, k).permute(0, 3, 1, 2))

    def _distance_chunks(self, flat: Tensor) -> Iterator[Tensor]:
        """(N, D) float32 -> (n, K) squared distances to every code, chunk by chunk, without gradient.

        ||z||^2 - 2 z.e^T + ||e||^2 (no N x K x D tensor); chunks bound each (n, K) matrix to
        ~64 MiB for large images.
        """
        codebook = self.codebook.detach().float()
        e_sq = codebook.pow(2).sum(1)  # (K,)
        chunk = max(1, _DISTANCE_ELEMENTS // self.codebook_size)
        for part in flat.detach().split(chunk):
            # Grad and autocast modes are set per chunk: a context held across `yield` would leak to the caller.
            with torch.no_grad(), torch.autocast(flat.device.type, enabled=False):
                distances = torch.addmm(part.pow(2).sum(1, keepdim=True) + e_sq, part, codebook.t(), alpha=-2.0)
            yield distances

    def lookup(self, symbols: Tensor) -> Tensor:
        """Codebook vectors of symbols (B, h, w) int64 -> (B, D, h, w) float32."""
        return F.embedding(symbols, self.codebook).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def set_codebook(self, vectors: Tensor) -> None:
        """Replace all codes by vectors (K, D) float, e.g. from an external k-means.

        Keeps the EMA state consistent and marks the codebook as initialized.
        """
        if vectors.shape != self.codebook.shape:
            raise ValueError(f"expected codebook shape {tuple(self.codebook.shape)}, got {tuple(vectors.shape)}")
        index = torch.arange(self.codebook_size, device=self.codebook.device)
        self._set_codes(index, vectors.to(self.codebook.device).float())
        self.initialized.fill_(True)

    # ------------------------------------------------------------------ training forward

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize z (B, D, h, w); in training mode also update the codebook state.

        The losses are means over all B*D*h*w elements and use the codebook as it was
        before this step's update.
        """
        b, _, h, w = z.shape
        flat = _flatten(z)  # (N, D)
        if self.training and not bool(self.initialized):
            self._initialize(flat)
        symbols = self._nearest_flat(flat)  # (N,)
        q = self.lookup(symbols.view(b, h, w))  # (B, D, h, w) float32
        z32 = z.float()
        loss = self.commitment_weight * F.mse_loss(z32, q.detach())
        if not self.ema:
            loss = loss + F.mse_loss(q, z32.detach())
        # q + (z - z) is exactly q in value, with the identity gradient to z (straight-through).
        quantized = q.detach() + (z32 - z32.detach())
        if self.training:
            self._update(flat.detach(), symbols)
        return QuantizerOutput(quantized, symbols.view(b, h, w), loss)

    @torch.no_grad()
    def _initialize(self, flat: Tensor) -> None:
        """Seed every code with a vector of the first batch (rank 0's, under DDP)."""
        codebook = _broadcast_(_sample_rows(flat, self.codebook_size))
        self._set_codes(torch.arange(self.codebook_size, device=flat.device), codebook)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: Tensor, symbols: Tensor) -> None:
        """One training step of codebook bookkeeping: EMA, usage, restart pool, dead codes."""
        self.step += 1
        counts = torch.bincount(symbols, minlength=self.codebook_size).float()  # (K,)
        if self.ema:
            sums = flat.new_zeros(self.codebook_size, self.dim).index_add_(0, symbols, flat)  # (K, D)
            _all_reduce_(sums)
            self._ema_update(_all_reduce_(counts), sums)
        else:
            _all_reduce_(counts)
        self.last_used[counts > 0] = self.step
        self.usage_ema.mul_(_USAGE_DECAY).add_(counts / counts.sum().clamp(min=1), alpha=1 - _USAGE_DECAY)
        self._remember(flat)
        if self.dead_after > 0:
            self._restart_dead()

    def _ema_update(self, counts: Tensor, sums: Tensor) -> None:
        """EMA of cluster sizes (K,) and vector sums (K, D); codes = sums / smoothed sizes."""
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(self.embed_sum / self._smoothed_sizes(self.cluster_size).unsqueeze(1))

    def _smoothed_sizes(self, cluster_size: Tensor) -> Tensor:
        """Laplace-smoothed cluster sizes (K,): the EMA codes are embed_sum / these."""
        n = cluster_size.sum()
        return (cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # embed_sum (REBUILT_ON_LOAD): only EMA training reads it, and it is codebook * smoothed
        # sizes, so a compact file need not carry it.
        key, codes, sizes = (prefix + n for n in ("embed_sum", "codebook", "cluster_size"))
        if self.ema and key not in state_dict and codes in state_dict and sizes in state_dict:
            smoothed = self._smoothed_sizes(state_dict[sizes].float())
            state_dict[key] = state_dict[codes].float() * smoothed.unsqueeze(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _remember(self, flat: Tensor) -> None:
        """Write up to a quarter of the pool with random vectors of this batch (ring buffer)."""
        capacity = self.recent.shape[0]
        n = min(flat.shape[0], max(1, capacity // 4))
        rows = flat[torch.randperm(flat.shape[0], device=flat.device)[:n]]
        start = int(self.recent_count) % capacity
        positions = (torch.arange(n, device=flat.device) + start) % capacity
        self.recent[positions] = rows
        self.recent_count += n

    def _restart_dead(self) -> None:
        """Re-seed codes neither used nor seeded within dead_after steps (rank 0's choice)."""
        idle = self.step - torch.maximum(self.last_used, self.seeded_at)
        dead = (idle >= self.dead_after).nonzero().squeeze(1)  # identical on all ranks
        if dead.numel() == 0:
            return
        pool = self.recent[: min(int(self.recent_count), self.recent.shape[0])]
        vectors = _broadcast_(_sample_rows(pool, dead.numel()))
        self._set_codes(dead, vectors)

    def _set_codes(self, index: Tensor, vectors: Tensor) -> None:
        """Replace codes index (n,) by vectors (n, D) and restart their EMA and idle clocks."""
        self.codebook[index] = vectors.to(self.codebook.dtype)
        if self.ema:
            self.embed_sum[index] = vectors
            self.cluster_size[index] = 1.0
        self.seeded_at[index] = self.step

    # ------------------------------------------------------------------ health report

    def usage(self) -> dict[str, float]:
        """Codebook health over recent training steps.

        perplexity: exp(entropy) of the code frequencies, an EMA over ~100 steps
            (K when all codes are equally used, 1 when one code takes everything).
        in_use: fraction of codes assigned at least once in the last dead_after steps
            (all steps seen when dead_after is 0).
        Both are 0.0 before the first training step.
        """
        if int(self.step) == 0:
            return {"perplexity": 0.0, "in_use": 0.0}
        probs = self.usage_ema / self.usage_ema.sum()  # the EMA bias cancels here
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum()
        window = self.dead_after if self.dead_after > 0 else int(self.step)
        recent = (self.last_used >= 0) & (self.step - self.last_used < window)
        return {"perplexity": float(entropy.exp()), "in_use": float(recent.float().mean())}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, ema={self.ema}"
