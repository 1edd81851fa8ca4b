"""Symbol prior over the VQ-VAE-2 symbol maps, with the decode schedules the entropy coder walks.

Two decode orders, each with its own network per level (vqcodec.context):
  "raster": a gated PixelCNN, one position per step (exact but h * w steps);
  "fast":   a grouped context model, s * s steps per level (s = fast_groups[level]).
Training uses the teacher-forced `logits`; coding uses `stepper`, whose `logits(step, symbols)`
reads only symbols of earlier steps, through explicit masks, so the encoder (full map) and the
decoder (partial map) get bit-identical logits.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec.context import GatedPixelCNN, GroupedContextModel

Order = Literal["fast", "raster"]
ORDERS: tuple[str, ...] = ("fast", "raster")


@dataclass(frozen=True)
class PriorConfig:
    """Hyperparameters of a SymbolPrior; per-level tuples are bottom first."""

    codebook_size: tuple[int, ...]  # per level (copy of the VQ-VAE's)
    upsample: tuple[int, ...]  # per level l < L-1: grid ratio level l+1 -> level l (VQ-VAE downsample[l+1])
    channels: int = 64  # width of every context network
    layers: int = 6  # gated layers of the raster PixelCNN per level
    fast_layers: int = 6  # conv layers of the grouped model: 1x1 in, (fast_layers - 2) residual 3x3, 1x1 out
    # Width of the grouped model; 0: `channels`. Each of its cells holds a whole s x s block, so it
    # needs more width than the raster network, which has `channels` per position.
    fast_channels: int = 0
    # Side s of the s x s group pattern per level (s * s passes). Empty: 2 for every conditioned
    # level (the coarser level already carries the layout), 4 for the unconditioned top.
    fast_groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("codebook_size", "upsample", "fast_groups"):  # lists from JSON become tuples
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        levels = len(self.codebook_size)
        if not self.fast_groups and levels:
            object.__setattr__(self, "fast_groups", (2,) * (levels - 1) + (4,))
        if levels < 1 or len(self.upsample) != levels - 1 or len(self.fast_groups) != levels:
            raise ValueError(f"need len(codebook_size) = len(upsample) + 1 = len(fast_groups) >= 1, got {self}")
        if any(k < 2 for k in self.codebook_size) or any(u < 1 for u in self.upsample):
            raise ValueError(f"codebook sizes must be >= 2 and upsample factors >= 1, got {self}")
        if any(s < 1 or s & (s - 1) for s in self.fast_groups):
            raise ValueError(f"fast_groups must be powers of two, got {self.fast_groups}")
        if self.channels < 1 or self.layers < 1 or self.fast_layers < 2 or self.fast_channels < 0:
            raise ValueError(f"need channels >= 1, layers >= 1, fast_layers >= 2, fast_channels >= 0, got {self}")

    @property
    def levels(self) -> int:
        return len(self.codebook_size)

    @property
    def fast_width(self) -> int:
        """Channels of the fast order's networks."""
        return self.fast_channels or self.channels

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples stay tuples; a JSON round trip turns them into lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorConfig:
        """Inverse of to_dict; accepts lists for tuples; unknown keys raise ValueError."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PriorConfig keys: {sorted(unknown)}")
        return cls(**d)


class LevelStepper(abc.ABC):
    """Decode steps of one level: `schedule` and the logits of each step.

    Attributes:
        schedule: per step, (n_step,) int64 flat raster positions (row * width + col); together
            they cover every position exactly once.
    Holds no mutable state after construction (threads may each use their own stepper).
    """

    schedule: list[Tensor]

    @abc.abstractmethod
    def logits(self, step: int, symbols: Tensor) -> Tensor:
        """Logits of the positions `schedule[step]`, in that order.

        Args:
            step: 0 .. len(schedule) - 1.
            symbols: (1, h, w) int64; positions of earlier steps hold their values, all others
                anything: they are masked out before the network sees them.
        Returns:
            (n_step, K) float32 on the CPU; bit-identical whatever the other positions hold.
        """

    def step_logits(self, step: int, symbols: Tensor) -> Callable[[int, int], Tensor]:
        """`logits` a slice at a time: part(lo, hi) gives the logits of schedule[step][lo:hi].

        The step's network pass runs once, here; each part then costs only its own rows, so a
        caller can code a step of a large map without its whole (n_step, K) table. With lo, hi
        = 0, n_step the part is `logits` itself; a smaller part may differ from its slice of
        `logits` in float32 rounding, but not in exact arithmetic (`vqcodec.exact`).
        """
        whole = self.logits(step, symbols)
        return lambda lo, hi: whole[lo:hi]


class RasterStepper(LevelStepper):
    """The gated PixelCNN's exact raster-order model, decoded one wavefront per step.

    Position (r, c) reads `margin` rows above and `margin` columns to either side, so it only
    needs positions with a smaller wavefront index c + r * (margin + 1): every step decodes the
    whole anti-diagonal band of that index at once (about width / (margin + 1) positions),
    h * (margin + 1) + w steps instead of h * w, with the same probabilities as a raster scan.
    `wavefront=False` gives the one-position raster scan of format version 1.
    Each position's logits come from the network run on a crop around it, batched per step.
    """

    def __init__(self, net: GatedPixelCNN, height: int, width: int, context: Tensor | None,
                 wavefront: bool = True) -> None:
        self.net, self.height, self.width = net, height, width
        device = net.embed.weight.device
        m, box = net.margin, net.box
        flat = torch.arange(height * width)
        if wavefront:
            rows, cols = flat // width, flat % width
            index = cols + rows * (m + 1)
            flat = flat[torch.argsort(index, stable=True)]  # wavefront, then row
            self.schedule = list(flat.split(torch.bincount(index).tolist()))
        else:
            self.schedule = list(flat.split(1))
        # Padded by the margin (rows above, columns both sides; map (r, c) sits at (r + m, c + m))
        # so that every crop is an index pattern plus an offset.
        features = net.features(None if context is None else context.to(device), height, width)
        self.features = None if features is None else F.pad(features, (m, m, m, 0))[0]  # (C, h+m, w+2m)
        self.inside = F.pad(torch.ones(height, width, device=device), (m, m, m, 0))  # (h+m, w+2m)
        # The current position is the centre of a crop's bottom row: it and the rest of that row
        # are not decoded yet, at every step.
        self.past = torch.ones(m + 1, 2 * m + 1, device=device)
        self.past[m, m:] = 0
        self.crop_rows = torch.arange(m + 1, device=device).view(1, -1, 1)  # crop (m+1, 2m+1)
        self.crop_cols = torch.arange(2 * m + 1, device=device).view(1, 1, -1)
        self.box_rows = torch.arange(m - box, m + 1, device=device).view(1, -1, 1)  # first layer's box
        self.box_cols = torch.arange(m - box, m + box + 1, device=device).view(1, 1, -1)
        self.device = device

    @torch.no_grad()
    def logits(self, step: int, symbols: Tensor) -> Tensor:
        """symbols (1, h, w) int64 -> (n, K) float32 logits of the step's positions (reads only earlier ones)."""
        net, m, box = self.net, self.net.margin, self.net.box
        positions = self.schedule[step].to(self.device)
        r = (positions // self.width).view(-1, 1, 1)  # padded row of a crop's top = r
        c = (positions % self.width).view(-1, 1, 1)  # padded column of a crop's left = c
        padded = F.pad(symbols[0].to(self.device), (m, m, m, 0))
        rows, cols = r + self.crop_rows, c + self.crop_cols
        visible = self.inside[rows, cols] * self.past  # (n, m+1, 2m+1)
        crop = torch.where(visible > 0, padded[rows, cols], torch.zeros_like(rows))
        embedded = net.embed(crop).permute(0, 3, 1, 2) * visible.unsqueeze(1)  # (n, C, m+1, 2m+1)
        inside = self.inside[r + self.box_rows, c + self.box_cols].unsqueeze(1)  # (n, 1, box+1, 2box+1)
        features = None
        if self.features is not None:  # the box's bottom row, left half up to the position
            features = self.features[:, r + m, c + self.box_cols[..., : box + 1]].permute(1, 0, 2, 3)  # (n, C, 1, box+1)
        return net.crop_logits(embedded, features, inside).float().cpu()


class GroupStepper(LevelStepper):
    """Up to s * s steps, each one network pass that decodes one group of the interleaved pattern.

    Groups without a position on the map (maps smaller than s x s) get no step.
    """

    def __init__(self, net: GroupedContextModel, height: int, width: int, context: Tensor | None) -> None:
        self.net, self.height, self.width = net, height, width
        device = net.embed.weight.device
        self.features = net.features(None if context is None else context.to(device), height, width)
        s = net.side
        hp, wp = net.padded_size(height, width)
        rows, cols = torch.arange(hp // s), torch.arange(wp // s)
        self.visible: list[Tensor] = []
        self.cells: list[Tensor] = []  # per step: (n,) flat indices into the (hp/s, wp/s) output grid
        self.schedule = []
        for g, (a, b) in enumerate(net.order):
            keep_rows, keep_cols = rows[rows * s + a < height], cols[cols * s + b < width]
            if not (len(keep_rows) and len(keep_cols)):  # a map smaller than s x s: no empty steps
                continue
            self.visible.append(net.visibility(height, width, g).to(device))
            self.cells.append((keep_rows[:, None] * (wp // s) + keep_cols[None, :]).flatten().to(device))
            self.schedule.append(((keep_rows[:, None] * s + a) * width + keep_cols[None, :] * s + b).flatten())

    @torch.no_grad()
    def logits(self, step: int, symbols: Tensor) -> Tensor:
        """symbols (1, h, w) int64 -> (n_step, K) float32 logits of group `step` (reads only earlier groups)."""
        return self.step_logits(step, symbols)(0, len(self.schedule[step]))

    @torch.no_grad()
    def step_logits(self, step: int, symbols: Tensor) -> Callable[[int, int], Tensor]:
        visible = self.visible[step]
        hp, wp = visible.shape[-2:]
        padded = F.pad(symbols.to(visible.device), (0, wp - self.width, 0, hp - self.height))
        hidden = torch.where(visible[:, 0] > 0, padded, torch.zeros_like(padded))
        trunk = self.net.pass_trunk(hidden, visible, self.features)  # (1, C, hp/s, wp/s)
        cells = self.cells[step]

        @torch.no_grad()
        def part(lo: int, hi: int) -> Tensor:
            if (lo, hi) == (0, len(cells)):  # the whole grid through the head: the float32 sums of format 2
                out = self.net.head(trunk).flatten(2)[0][:, cells]
            else:  # only these cells (the head is 1x1): memory of the part alone
                out = self.net.head(trunk.flatten(2)[..., cells[lo:hi], None])[0, :, :, 0]
            return out.t().float().cpu().contiguous()

        return part


class SymbolPrior(nn.Module):
    """All levels; level L-1 (top) unconditional, level l conditioned on level l+1's symbols.

    Holds a gated PixelCNN (raster order, exact) and a grouped context model (fast order) per level.

        top symbols (level L-1) ─► raster[L-1] | fast[L-1] ─► logits (B, K, h, w)
              │
              └─► ConditionNet ─► upsample ─┐
        level l symbols ─► raster[l] | fast[l] ◄┘ ─► logits (B, K_l, h_l, w_l) ─► cross-entropy
    """

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        c, ks = config.channels, config.codebook_size
        ups: list[int | None] = [*config.upsample, None]
        contexts: list[int | None] = [*ks[1:], None]
        self.raster = nn.ModuleList(GatedPixelCNN(ks[l], c, config.layers, ups[l], contexts[l])
                                    for l in range(config.levels))
        self.fast = nn.ModuleList(GroupedContextModel(ks[l], config.fast_width, config.fast_layers,
                                                      config.fast_groups[l], ups[l], contexts[l])
                                  for l in range(config.levels))

    def networks(self, order: Order) -> nn.ModuleList:
        """The per-level context networks of one decode order (bottom first)."""
        return self.raster if order == "raster" else self.fast

    def logits(self, symbols: list[Tensor], order: Order) -> list[Tensor]:
        """Teacher-forced logits: per level (B, h_l, w_l) int64 -> per level (B, K_l, h_l, w_l) float32."""
        return self._per_level(symbols, order, lambda net: net)

    def bits(self, symbols: list[Tensor], order: Order) -> list[Tensor]:
        """Per level (B,) float32: total bits of each map under the teacher-forced prior."""
        return [nats / math.log(2) for nats in self._nats(symbols, order)]

    @torch.no_grad()
    def bits_in_bands(self, symbols: list[Tensor], order: Order, band_rows: int = 16,
                      context_rows: int = 8) -> float:
        """Total bits of all levels, as `bits` computes them, in bands of `band_rows` top-level rows.

        Each band is evaluated with `context_rows` more top-level rows on both sides and counts only
        its own rows, so memory follows the band, not the image (whole-map logits of a 12 MP image
        take gigabytes). Exact when one band covers the map; otherwise symbols near a band edge may
        miss context beyond the extra rows, a small difference for an estimate.
        """
        ratios = [math.prod(self.config.upsample[level:]) for level in range(len(symbols))]  # rows per top row
        top_rows = symbols[-1].shape[-2]
        total = 0.0
        for start in range(0, top_rows, band_rows):
            r0, r1 = max(0, start - context_rows), min(top_rows, start + band_rows + context_rows)
            crops = [s[:, r0 * k : r1 * k] for s, k in zip(symbols, ratios)]
            for z, s, k in zip(self.logits(crops, order), crops, ratios):
                own = slice((start - r0) * k, (min(start + band_rows, top_rows) - r0) * k)
                total += float(F.cross_entropy(z[:, :, own], s[:, own], reduction="sum")) / math.log(2)
        return total

    def loss(self, symbols: list[Tensor], order: Order) -> Tensor:
        """() mean nats per symbol over all symbols of all levels (levels weighted by their size)."""
        total = sum(nats.sum() for nats in self._nats(symbols, order))
        return total / sum(s.numel() for s in symbols)

    def _nats(self, symbols: list[Tensor], order: Order) -> list[Tensor]:
        """Per level (B,) nats of each map, as cross-entropy over `logits` gives them (computed
        by each network without assembling the whole map's logits)."""
        return self._per_level(symbols, order, lambda net: net.nats)

    def _per_level(self, symbols: list[Tensor], order: Order,
                   compute: Callable[[nn.Module], Callable[[Tensor, Tensor | None], Tensor]]) -> list[Tensor]:
        """compute(net)(level symbols, conditioning features) of every level, bottom first."""
        self._check(symbols, order)
        out = []
        for level, level_symbols in enumerate(symbols):
            context = symbols[level + 1] if level + 1 < self.config.levels else None
            net = self.networks(order)[level]
            out.append(compute(net)(level_symbols, net.features(context, *level_symbols.shape[-2:])))
        return out

    def stepper(self, order: Order, level: int, height: int, width: int, context: Tensor | None,
                wavefront: bool = True) -> LevelStepper:
        """Decode steps of one level.

        Args:
            order: "fast" or "raster".
            level: 0 (bottom) .. L-1 (top).
            height, width: the level's symbol map size.
            context: (1, h', w') int64, the next-coarser level's full symbols; None for the top.
            wavefront: raster order only: decode a wavefront per step (False: one position per
                step, the schedule of format version 1).
        """
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
        if not 0 <= level < self.config.levels:
            raise ValueError(f"level {level} out of range for {self.config.levels} levels")
        if (context is None) != (level == self.config.levels - 1):
            raise ValueError("context must be given for every level but the top, and only there")
        if context is not None:
            self._check_grids(height, width, context.shape[-2:], level)
        with torch.no_grad():
            if order == "raster":
                return RasterStepper(self.raster[level], height, width, context, wavefront)
            return GroupStepper(self.fast[level], height, width, context)

    def _check(self, symbols: list[Tensor], order: str) -> None:
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
        if len(symbols) != self.config.levels:
            raise ValueError(f"expected {self.config.levels} symbol maps, got {len(symbols)}")
        for level in range(self.config.levels - 1):
            self._check_grids(*symbols[level].shape[-2:], symbols[level + 1].shape[-2:], level)

    def _check_grids(self, height: int, width: int, coarse: tuple[int, ...] | torch.Size, level: int) -> None:
        u = self.config.upsample[level]
        if not (height <= coarse[0] * u and width <= coarse[1] * u):
            raise ValueError(f"level {level} map {height}x{width} is larger than {u} x its context {tuple(coarse)}")
