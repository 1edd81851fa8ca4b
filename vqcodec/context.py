"""Context networks of the symbol prior: one per level and decode order.

GatedPixelCNN (raster order, exact): van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders": a vertical stack (rows strictly above) and a horizontal stack (same row,
columns to the left), gated tanh * sigmoid units, residual horizontal stack, no blind spot.
Every convolution is unpadded ("valid"): the full-map pass pads its inputs with zeros, the
one-position pass of the decoder runs the same layers on a crop that covers the receptive field
and zeroes what lies outside the map after every layer, which is what the padding does.

GroupedContextModel (fast order): the map is cut into s x s interleaved groups; pass g predicts
group g from the symbols of groups < g, on the pixel-unshuffled (h/s, w/s) grid, where each cell
holds one s x s block and therefore exactly one position of every group.

Both take the coarser level's symbols through a ConditionNet (none at the top level).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FIRST_KERNEL = 3  # first gated layer: 1 row above (3 columns), 1 column left (mask "A")
KERNEL = 3  # later gated layers: 1 row above + own row, 1 column each side (mask "B")
IGNORED = -100  # target of padded positions: cross_entropy's ignore_index skips them
CONDITION_CONVS = 2  # 3x3 convolutions on the coarser grid before upsampling


class Gate(nn.Module):
    """(B, 2C, ...) -> (B, C, ...): tanh(a) * sigmoid(b), the gated unit of the paper.

    A module (no weights) so that `exact.exact_prior` can swap in its table-based twin.
    """

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)


def _plus(x: Tensor, bias: Tensor | None) -> Tensor:
    return x if bias is None else x + bias


def head_nats(head: nn.Sequential, x: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of head(x)'s logits at every position: x (B, C, H, W), targets (B, H, W)
    int64 -> (B, H, W) nats, 0 where the target is IGNORED.

    A head of ReLUs and 1x1 convolutions runs as matrix products on the channels-last view, so
    the K-way softmax reads contiguous logits: over the convolutions' (B, K, H, W) logits, the
    layout copies and the strided softmax and its backward took a third of a CPU training step of
    vqc-4's raster order (1.08 s -> 0.70 s) and a quarter of its fast order's prior (0.82 -> 0.60 s),
    for the same numbers (bfloat16 autocast included). Other heads (an exact copy's) run as they are.
    """
    if not all(isinstance(layer, nn.ReLU) or (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1))
               for layer in head):
        return F.cross_entropy(head(x), targets, ignore_index=IGNORED, reduction="none")
    x = x.permute(0, 2, 3, 1)
    for layer in head:
        x = F.relu(x) if isinstance(layer, nn.ReLU) else F.linear(x, layer.weight[:, :, 0, 0], layer.bias)
    return F.cross_entropy(x.flatten(0, 2).float(), targets.flatten(), ignore_index=IGNORED,
                           reduction="none").view_as(targets)


def _input_axis(name: str, weight: Tensor) -> int | None:
    """Axis of a weight that reads channels: 1 for convolutions, 0 for the transposed one, None otherwise."""
    if weight.dim() != 4:
        return None  # biases and embeddings read no channels
    return 0 if name.startswith("condition.up.") else 1


def _copy_corner(mine: Tensor, old: Tensor, input_axis: int | None) -> None:
    """Copy `old` into the leading corner of `mine` (same rank, no side smaller); the old outputs'
    weights on new input channels become zero, so the new channels do not change them."""
    if input_axis is not None:
        reads_new: list[slice] = [slice(None)] * mine.dim()
        reads_new[1 - input_axis] = slice(0, old.shape[1 - input_axis])
        reads_new[input_axis] = slice(old.shape[input_axis], None)
        mine[tuple(reads_new)] = 0
    mine[tuple(slice(0, n) for n in old.shape)] = old


def _copy_input_projection(mine: Tensor, old: Tensor, side: int) -> None:
    """The 1x1 input convolution reads unshuffled (embedding + mask) channels, channel-major:
    column c * s * s + phase. Widening moves the mask channel from index C_old to C_new."""
    if mine.dim() == 1:  # bias
        mine[: old.shape[0]] = old
        return
    new_c, old_c = mine.shape[0], old.shape[0]
    grid, old_grid = mine.view(new_c, new_c + 1, side * side), old.view(old_c, old_c + 1, side * side)
    grid[:old_c] = 0
    grid[:old_c, :old_c] = old_grid[:, :old_c]
    grid[:old_c, new_c] = old_grid[:, old_c]


def _copy_bias_projection(mine: Tensor, old: Tensor, new_c: int, old_c: int) -> None:
    """cond_proj maps unshuffled conditioning (C * s * s columns, channel-major) to one C-wide bias
    chunk per unit. Chunks of units the source has are copied into their corners; the rest are zero."""
    new_units, old_units = mine.shape[0] // new_c, old.shape[0] // old_c
    units = min(new_units, old_units)
    if mine.dim() == 1:  # bias
        chunks, old_chunks = mine.view(new_units, new_c), old.view(old_units, old_c)
        chunks[units:] = 0
        chunks[:units, :old_c] = old_chunks[:units]
        return
    phases = mine.shape[1] // new_c
    chunks = mine.view(new_units, new_c, new_c, phases)
    old_chunks = old.view(old_units, old_c, old_c, phases)
    chunks[units:] = 0
    chunks[:units, :old_c] = 0
    chunks[:units, :old_c, :old_c] = old_chunks[:units]


def _bottom_center(x: Tensor, height: int, width: int) -> Tensor:
    """Last `height` rows, centred `width` columns of x (..., H, W): the layer's output box."""
    left = (x.shape[-1] - width) // 2
    return x[..., x.shape[-2] - height :, left : left + width]


def _bottom_left(x: Tensor, height: int, width: int) -> Tensor:
    """Last `height` rows, first `width` columns: where the horizontal stack sits in the vertical box."""
    return x[..., x.shape[-2] - height :, :width]


def _bottom_right(x: Tensor, height: int, width: int) -> Tensor:
    """Last `height` rows, last `width` columns: a shrinking horizontal stack keeps its right end."""
    return x[..., x.shape[-2] - height :, x.shape[-1] - width :]


class ConditionNet(nn.Module):
    """Coarser level's symbols -> conditioning features on this level's grid.

    embed -> CONDITION_CONVS residual 3x3 convs -> transposed conv (kernel = stride = upsample).
    """

    def __init__(self, codebook_size: int, channels: int, upsample: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(codebook_size, channels)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(CONDITION_CONVS))
        self.up = nn.ConvTranspose2d(channels, channels, upsample, stride=upsample)

    def forward(self, context: Tensor) -> Tensor:
        """context (B, h', w') int64 -> (B, C, h' * upsample, w' * upsample) float32."""
        x = self.embed(context).permute(0, 3, 1, 2)
        for conv in self.convs:
            x = x + conv(F.relu(x))
        return self.up(F.relu(x))


class GatedLayer(nn.Module):
    """One gated layer of both stacks; unpadded convolutions, so the caller shapes the inputs.

    Vertical input covers the rows the kernel reads (first layer: rows strictly above; later
    layers: one row above and the own row of the previous vertical output, which itself only
    saw rows above). Horizontal input: the row, `p` columns further left (first layer: strictly
    left; later layers: left and the own column).
    """

    def __init__(self, channels: int, kernel: int, *, first: bool) -> None:
        super().__init__()
        self.first = first
        self.p = kernel // 2
        rows = self.p if first else self.p + 1
        self.v_conv = nn.Conv2d(channels, 2 * channels, (rows, kernel))
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, rows))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.gate = Gate()

    def pad(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Full-map inputs (B, C, h, w) -> zero-padded (and, for the first layer, shifted) inputs."""
        p = self.p
        if self.first:  # drop the own row / column: the first layer never reads the current symbol
            return F.pad(v, (p, p, p, -1)), F.pad(h, (p, -1, 0, 0))
        return F.pad(v, (p, p, p, 0)), F.pad(h, (p, 0, 0, 0))

    def forward(self, v_in: Tensor, h_in: Tensor, cond: Tensor | None,
                inside: Tensor | None) -> tuple[Tensor, Tensor]:
        """One layer on prepared inputs.

        Args:
            v_in: (B, C, Hv + rows - 1, Wv + 2p) vertical input; output box is (Hv, Wv).
            h_in: (B, C, Hh, Wh + rows - 1) horizontal input; its output box is the bottom-left
                (Hh, Wh) part of the vertical box.
            cond: (B, 2C, >=Hh, >=Wh) conditioning bias of the horizontal stack, bottom-right aligned
                with its output, or None.
            inside: (1, 1, >=Hv, >=Wv) 1 inside the map, 0 outside (bottom-centre aligned), or None
                when the inputs were padded (full map).
        Returns:
            v (B, C, Hv, Wv), h (B, C, Hh, Wh).
        """
        v_pre = self.v_conv(v_in)  # (B, 2C, Hv, Wv)
        h_conv = self.h_conv(h_in)  # (B, 2C, Hh, Wh)
        hv, wv, hh, wh = *v_pre.shape[-2:], *h_conv.shape[-2:]
        if cond is not None:
            h_conv = h_conv + _bottom_right(cond, hh, wh)
        h_pre = h_conv + self.v_to_h(_bottom_left(v_pre, hh, wh))
        v, h = self.gate(v_pre), self.h_out(self.gate(h_pre))
        if not self.first:  # residual; the first layer's input holds the current symbol
            h = h + h_in[..., h_in.shape[-1] - wh :]
        if inside is not None:  # what the padding of the next layer would see: zeros off the map
            inside = _bottom_center(inside, hv, wv)
            v, h = v * inside, h * _bottom_left(inside, hh, wh)
        return v, h


class GatedPixelCNN(nn.Module):
    """Raster-order prior of one level, conditioned on the coarser level when `upsample` is given.

        symbols ─► embed ─► [gated layer] x layers ─► h ─► relu/1x1/relu/1x1 ─► logits (K)
        context ─► ConditionNet ─► 1x1 ─► per-layer bias ──┘

    The conditioning bias enters the horizontal stack of every layer, the one that produces the
    output; the vertical stack stays unconditioned, which keeps the per-position decode step cheap
    (its conditioning would be needed on the whole crop, the horizontal one only on a row).
    """

    def __init__(self, codebook_size: int, channels: int, layers: int, upsample: int | None,
                 context_codebook_size: int | None) -> None:
        super().__init__()
        self.embed = nn.Embedding(codebook_size, channels)
        self.layers = nn.ModuleList([GatedLayer(channels, FIRST_KERNEL, first=True)]
                                    + [GatedLayer(channels, KERNEL, first=False) for _ in range(layers - 1)])
        self.condition: ConditionNet | None = None
        self.cond_proj: nn.Conv2d | None = None
        if upsample is not None and context_codebook_size is not None:
            self.condition = ConditionNet(context_codebook_size, channels, upsample)
            self.cond_proj = nn.Conv2d(channels, layers * 2 * channels, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1),
                                  nn.ReLU(), nn.Conv2d(channels, codebook_size, 1))
        # Receptive field: `margin` rows above and columns each side; the first layer's
        # output box (conditioning and inside-map masks of a crop) has radius `box`.
        self.box = (layers - 1) * (KERNEL // 2)
        self.margin = FIRST_KERNEL // 2 + self.box

    def features(self, context: Tensor | None, height: int, width: int) -> Tensor | None:
        """context (B, h', w') int64 -> conditioning features (B, C, height, width), None at the top."""
        if self.condition is None:
            return None
        assert context is not None, "a conditioned level needs the coarser level's symbols"
        return self.condition(context)[..., :height, :width]

    def forward(self, symbols: Tensor, features: Tensor | None) -> Tensor:
        """Teacher-forced logits of a whole map: symbols (B, h, w) int64 -> (B, K, h, w) float32."""
        return self.head(self._trunk(symbols, features))

    def nats(self, symbols: Tensor, features: Tensor | None) -> Tensor:
        """Teacher-forced code length of each map: symbols (B, h, w) int64 -> (B,) nats."""
        return head_nats(self.head, self._trunk(symbols, features), symbols).flatten(1).sum(1)

    def _trunk(self, symbols: Tensor, features: Tensor | None) -> Tensor:
        """`forward` before its head: (B, C, h, w)."""
        x = self.embed(symbols).permute(0, 3, 1, 2)
        cond = self._cond(features)
        v, h = x, x
        for n, layer in enumerate(self.layers):
            v, h = layer(*layer.pad(v, h), None if cond is None else cond[n], None)
        return h

    def crop_logits(self, embedded: Tensor, features: Tensor | None, inside: Tensor) -> Tensor:
        """Logits of one position from a crop around it.

        Args:
            embedded: (1, C, margin + 1, 2 * margin + 1) embedding of the visible symbols; the
                position is the bottom row's centre; zero off the map and at not-yet-decoded places.
            features: (1, C, 1, box + 1) conditioning features of the bottom row's left half (up to
                and including the position), or None.
            inside: (1, 1, box + 1, 2 * box + 1) 1 on the map, 0 off it.
        Returns:
            (1, K) float32 logits.
        """
        margin = self.margin
        v, h = embedded[:, :, :-1], embedded[:, :, -1:, :margin]
        cond = self._cond(features)
        for n, layer in enumerate(self.layers):
            v, h = layer(v, h, None if cond is None else cond[n], inside)
        return self.head(h)[:, :, 0, 0]

    def _cond(self, features: Tensor | None) -> tuple[Tensor, ...] | None:
        """(B, C, H, W) -> per layer (B, 2C, H, W) biases, from one 1x1 convolution."""
        if self.cond_proj is None or features is None:
            return None
        return self.cond_proj(features).chunk(len(self.layers), dim=1)


def group_order(side: int) -> list[tuple[int, int]]:
    """Decode order of the phases (i mod s, j mod s) of an s x s group pattern, s a power of two.

    Coarse to fine, like a multi-scale pyramid: the phases of the s/2 pattern (scaled by 2), then
    the diagonal offsets, then the horizontal and vertical ones, so every later group sees the
    earlier ones as evenly spread neighbours. side 2: (0,0), (1,1), (0,1), (1,0).
    """
    if side == 1:
        return [(0, 0)]
    coarse = group_order(side // 2)
    diagonal = [(2 * a + 1, 2 * b + 1) for a, b in coarse]
    straight = [cell for a, b in coarse for cell in ((2 * a, 2 * b + 1), (2 * a + 1, 2 * b))]
    return [(2 * a, 2 * b) for a, b in coarse] + diagonal + straight


class GroupedContextModel(nn.Module):
    """Fast-order prior of one level: s * s passes, one network evaluation each.

        visible symbols ─► embed * mask ─┐
        mask (0/1) ──────────────────────┴► unshuffle(s) ─► 1x1 ─► [+ bias, x + 3x3(relu x)] x (layers - 2)
        context ─► ConditionNet ─► unshuffle(s) ─► 1x1 ─► biases ─────┘      ─► relu/1x1 ─► logits of group g
    """

    def __init__(self, codebook_size: int, channels: int, layers: int, side: int, upsample: int | None,
                 context_codebook_size: int | None) -> None:
        super().__init__()
        self.side, self.channels = side, channels
        self.order = group_order(side)
        units = max(layers - 2, 0)  # `layers` counts the input and output 1x1 convolutions too
        self.embed = nn.Embedding(codebook_size, channels)
        self.inp = nn.Conv2d(side * side * (channels + 1), channels, 1)
        self.units = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(units))
        self.condition: ConditionNet | None = None
        self.cond_proj: nn.Conv2d | None = None
        if upsample is not None and context_codebook_size is not None:
            self.condition = ConditionNet(context_codebook_size, channels, upsample)
            self.cond_proj = nn.Conv2d(side * side * channels, (units + 1) * channels, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, codebook_size, 1))
        # `exact.exact_prior` installs its lookup-table twin of embed + inp here (same numbers, faster).
        self.input_table: nn.Module | None = None
        self.feature_band_rows = 0  # > 0: `features` works in bands of about this many rows (exact copies)

    @torch.no_grad()
    def warm_start(self, source: GroupedContextModel) -> None:
        """Start from a trained model of another depth, width or group side, keeping what carries over.

        - Deeper: residual units beyond the source's depth, and their conditioning biases, start
          at zero (x + 0 = x); a shallower copy keeps the first units.
        - Wider (more channels): every trained tensor fills the leading corner of its wider self.
          Weights that feed the new channels into the old ones start at zero, so the copy computes
          the same logits; those that produce new channels keep their fresh initialisation, so
          that training reaches them.
        - Another group side: the input and conditioning projections stay fresh, while the
          embedding, the ConditionNet and the head carry over.

        Raises:
            ValueError: the source is wider than this model.
        """
        if source.channels > self.channels:
            raise ValueError(f"{self.channels} channels are narrower than the source's {source.channels}: "
                             "cannot warm-start from it")
        theirs = source.state_dict()
        same_side = source.side == self.side
        for name, mine in self.state_dict().items():
            old = theirs.get(name)
            if name.startswith("inp."):
                if same_side:
                    _copy_input_projection(mine, old, self.side)
            elif name.startswith("cond_proj."):
                if same_side:
                    _copy_bias_projection(mine, old, self.channels, source.channels)
            elif old is not None:
                _copy_corner(mine, old, _input_axis(name, mine))
            elif name.startswith("units."):
                mine.zero_()  # a new unit: x + 0 = x

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) rounded up to multiples of the group side."""
        s = self.side
        return -(-height // s) * s, -(-width // s) * s

    def group_map(self, height: int, width: int) -> Tensor:
        """(hp, wp) int64: the group (pass index) of every position of the padded map."""
        s = self.side
        rank = torch.empty(s, s, dtype=torch.int64)
        for g, (a, b) in enumerate(self.order):
            rank[a, b] = g
        hp, wp = self.padded_size(height, width)
        return rank.repeat(hp // s, wp // s)

    def visibility(self, height: int, width: int, group: int) -> Tensor:
        """(1, 1, hp, wp) float32: 1 where a symbol is known before pass `group` (earlier group, on the map)."""
        hp, wp = self.padded_size(height, width)
        visible = self.group_map(height, width) < group
        visible[height:], visible[:, width:] = False, False
        return visible.float().view(1, 1, hp, wp)

    def features(self, context: Tensor | None, height: int, width: int) -> Tensor | None:
        """context (B, h', w') int64 -> per-unit biases (B, (units + 1) * C, hp / s, wp / s), or None.

        With `feature_band_rows` set, computed band by band (each with the rows the conditioning
        convolutions reach around it), which bounds memory on large maps; exact arithmetic gives
        the whole-map result bit for bit, float arithmetic the same up to rounding.
        """
        if self.condition is None or self.cond_proj is None:
            return None
        assert context is not None, "a conditioned level needs the coarser level's symbols"
        hp, _ = self.padded_size(height, width)
        up = self.condition.up.stride[0]
        band = -(-self.feature_band_rows // (self.side * up)) * self.side * up  # whole cells on both grids
        if not band or band >= hp:
            return self._band_features(context, 0, hp, height, width)
        return torch.cat([self._band_features(context, top, min(top + band, hp), height, width)
                          for top in range(0, hp, band)], dim=2)

    def _band_features(self, context: Tensor, top: int, bottom: int, height: int, width: int) -> Tensor:
        """Biases of this level's (padded) rows top .. bottom - 1, multiples of s and of the upsampling."""
        assert self.condition is not None and self.cond_proj is not None
        up = self.condition.up.stride[0]
        first = max(0, top // up - CONDITION_CONVS)  # context rows the band's 3x3 convolutions read
        last = min(context.shape[-2], -(-bottom // up) + CONDITION_CONVS)
        cond = self.condition(context[..., first:last, :])[..., top - first * up :, :width]
        inside = max(0, min(bottom, height) - top)  # rows of the band on the map; the rest are padding
        _, wp = self.padded_size(height, width)
        cond = F.pad(cond[..., :inside, :], (0, wp - width, 0, bottom - top - inside))
        return self.cond_proj(F.pixel_unshuffle(cond, self.side))

    def pass_logits(self, symbols: Tensor, visible: Tensor, features: Tensor | None) -> Tensor:
        """One pass: logits of the group whose symbols are the first invisible phase.

        Args:
            symbols: (B, hp, wp) int64, already zero where `visible` is 0.
            visible: (1, 1, hp, wp) float32 0/1 mask of the symbols this pass may read.
            features: (B, (units + 1) * C, hp / s, wp / s) biases from `features`, or None.
        Returns:
            (B, K, hp / s, wp / s) float32: cell (I, J) holds the logits of that block's position
            of the group being decoded.
        """
        return self.head(self.pass_trunk(symbols, visible, features))

    def pass_trunk(self, symbols: Tensor, visible: Tensor, features: Tensor | None) -> Tensor:
        """`pass_logits` before its head: (B, C, hp / s, wp / s). The head works cell by cell (1x1),
        so it can run on any subset of cells. Decode steps run the input projection as the
        convolution of the diagram above (format 2's float32 files were coded with its sums);
        the teacher-forced passes look it up in tables (`_looked_up_codes`)."""
        if self.input_table is not None:
            x = self.input_table(symbols, visible)
        else:
            x = self.embed(symbols).permute(0, 3, 1, 2) * visible  # (B, C, hp, wp)
            x = torch.cat([x, visible.expand(x.shape[0], 1, -1, -1)], dim=1)
            x = self.inp(F.pixel_unshuffle(x, self.side))  # (B, C, hp / s, wp / s)
        return self._trunk(x, features)

    def _trunk(self, x: Tensor, features: Tensor | None) -> Tensor:
        count = len(self.units) + 1
        biases: list[Tensor | None] = [None] * count if features is None else list(features.chunk(count, dim=1))
        x = _plus(x, biases[0])
        for unit, bias in zip(self.units, biases[1:]):
            x = _plus(x, bias)
            x = x + unit(F.relu(x))
        return x

    def _looked_up_codes(self, padded: Tensor) -> Tensor:
        """What each symbol and its visibility flag add to the input projection (`inp`) at its
        place in its s x s block: (B, hp, wp) -> (B, s * s, cells, C).

        `inp` reads the unshuffled (C + 1) * s * s channels of embed * mask and mask (channel
        c * s * s + k: channel c at block position k); being 1x1, it is a sum over the block's
        positions of per-position tables, code by code. A pass sums the visible positions'
        rows (`_masked_input`), so all passes share one lookup: a CPU training step of vqc-4's
        fast order took 1.27 s with the convolution per pass, 0.90 s with a lookup per pass, and
        10-17 % less again with one shared lookup.
        """
        s2, c, rows = self.side * self.side, self.channels, self.embed.num_embeddings + 1
        weight = self.inp.weight[:, :, 0, 0]  # (C_out, (C + 1) * s * s)
        codes = torch.einsum("nc,ock->kno", self.embed.weight, weight[:, : c * s2].view(-1, c, s2))
        flags = weight[:, c * s2 :].t()[:, None, :]  # (s * s, 1, C_out)
        tables = torch.cat([codes, flags], dim=1).flatten(0, 1)  # (s * s * (K + 1), C_out)
        offsets = torch.arange(s2, device=padded.device)[None, :, None] * rows
        return F.embedding(self._by_block_position(padded) + offsets, tables) + tables[offsets + rows - 1]

    def _masked_input(self, looked_up: Tensor, visible: Tensor) -> Tensor:
        """One pass's input projection from `_looked_up_codes`: the visible positions' sum plus
        `inp`'s bias, (B, C, hp / s, wp / s)."""
        hp, wp = visible.shape[-2:]
        seen = self._by_block_position(visible.view(1, hp, wp))[..., None]  # (1, s * s, cells, 1)
        x = (looked_up * seen).sum(1) + self.inp.bias  # (B, cells, C)
        return x.transpose(1, 2).reshape(x.shape[0], -1, hp // self.side, wp // self.side)

    def _by_block_position(self, grid: Tensor) -> Tensor:
        """(B, hp, wp) -> (B, s * s, cells): unshuffled, block position k = a * s + b first."""
        s, (batch, hp, wp) = self.side, grid.shape
        return grid.view(batch, hp // s, s, wp // s, s).permute(0, 2, 4, 1, 3).reshape(batch, s * s, -1)

    def forward(self, symbols: Tensor, features: Tensor | None) -> Tensor:
        """Teacher-forced logits, s * s passes with their visibility: (B, h, w) int64 -> (B, K, h, w)."""
        height, width = symbols.shape[-2:]
        by_phase: list[Tensor | None] = [None] * len(self.order)
        for (a, b), trunk in self._teacher_forced_trunks(symbols, features):
            by_phase[a * self.side + b] = self.head(trunk)
        stacked = torch.stack(by_phase, dim=2).flatten(1, 2)  # type: ignore[arg-type]  # (B, K * s * s, hp/s, wp/s)
        return F.pixel_shuffle(stacked, self.side)[..., :height, :width]

    def nats(self, symbols: Tensor, features: Tensor | None) -> Tensor:
        """Teacher-forced code length of each map: symbols (B, h, w) int64 -> (B,) nats.

        The same sum as cross-entropy over `forward`'s logits, taken pass by pass against that
        pass's phase of the map: interleaving the K-channel logits of all passes into one map
        (stack + pixel_shuffle, and their backward) made a CPU training step of vqc-4's fast
        order 1.80 s instead of 1.27 s.
        """
        height, width = symbols.shape[-2:]
        hp, wp = self.padded_size(height, width)
        targets = F.pad(symbols, (0, wp - width, 0, hp - height), value=IGNORED)  # padding costs nothing
        total = symbols.new_zeros(symbols.shape[0], dtype=torch.float32)
        for (a, b), trunk in self._teacher_forced_trunks(symbols, features):
            phase = targets[:, a :: self.side, b :: self.side]
            total = total + head_nats(self.head, trunk, phase).flatten(1).sum(1)
        return total

    def _teacher_forced_trunks(self, symbols: Tensor,
                               features: Tensor | None) -> Iterator[tuple[tuple[int, int], Tensor]]:
        """((a, b), `pass_trunk` (B, C, hp / s, wp / s)) of every pass, each seeing the groups before it;
        the passes of an exact copy (`input_table` installed) keep its exact input."""
        height, width = symbols.shape[-2:]
        hp, wp = self.padded_size(height, width)
        padded = F.pad(symbols, (0, wp - width, 0, hp - height))
        looked_up = self._looked_up_codes(padded) if self.input_table is None else None
        for g, (a, b) in enumerate(self.order):
            visible = self.visibility(height, width, g).to(symbols.device)
            if looked_up is not None:  # a hidden symbol's row is masked out, whatever its code
                x = self._trunk(self._masked_input(looked_up, visible), features)
            else:
                x = self.pass_trunk(torch.where(visible[:, 0] > 0, padded, torch.zeros_like(padded)), visible, features)
            yield (a, b), x
