"""Hierarchical VQ-VAE (VQ-VAE-2, Razavi et al. 2019), in rosinality's layout, for 1..L levels.

Levels are indexed bottom first: level 0 has the finest grid, level L-1 the coarsest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec.quantize import VectorQuantizer

_PER_LEVEL = ("downsample", "codebook_size", "code_dim")
# Side, in pixels, of the image area `VQVAE2.decode` reconstructs at once: larger images go tile by
# tile (12 MP with vqc-3: 2.8 GB peak and super-linear time when decoded whole).
DECODE_TILE_PIXELS = 1024
# The same for `VQVAE2.latent_vectors` (encoding): whole, a 16.8 MP image took 1.5 GB above the
# model with vqc-3, growing with the image; in tiles 0.85 GB, about 0.4 GB of it the tile's.
ENCODE_TILE_PIXELS = 2048


class Tile(NamedTuple):
    """One tile of the bottom grid: its own cells (top, left, rows, cols) and the crop around them.

    The crop (rows r0 .. r1 - 1, columns c0 .. c1 - 1) adds a halo, the decoder's or the encoder's
    reach, on every side where the map goes on. All edges lie on whole top-level cells, so every
    level crops exactly.
    """

    top: int
    left: int
    rows: int
    cols: int
    r0: int
    r1: int
    c0: int
    c1: int

    def crop(self, maps: list[Tensor], ratios: list[int]) -> list[Tensor]:
        """The crop of each level's map (..., h_l, w_l); ratios: bottom cells per cell of each level."""
        return [m[..., self.r0 // f : self.r1 // f, self.c0 // f : self.c1 // f] for m, f in zip(maps, ratios)]

    def crop_pixels(self, image: Tensor, scale: int) -> Tensor:
        """The crop of an image (..., H, W) with `scale` pixels per bottom cell."""
        return image[..., self.r0 * scale : self.r1 * scale, self.c0 * scale : self.c1 * scale]

    def paste(self, maps: list[Tensor], cropped: list[Tensor], ratios: list[int]) -> None:
        """Write the tile's own cells of `cropped` (maps of the crop) into `maps` (whole-grid maps)."""
        for whole, part, f in zip(maps, cropped, ratios):
            own = part[..., (self.top - self.r0) // f :, (self.left - self.c0) // f :]
            whole[..., self.top // f : (self.top + self.rows) // f, self.left // f : (self.left + self.cols) // f] = \
                own[..., : self.rows // f, : self.cols // f]


# Decoder blocks a trained model can grow (VQVAE2Config count -> VQVAE2 module), each starting as
# the identity.
GROWABLE_BLOCKS = {"refine_blocks": "refine", "tail_blocks": "tail"}


@dataclass(frozen=True)
class VQVAE2Config:
    """Hyperparameters of a VQVAE2; per-level tuples are bottom first and of equal length."""

    channels: int = 128  # trunk width of every encoder and decoder
    res_blocks: int = 2
    res_channels: int = 64
    downsample: tuple[int, ...] = (4, 2)  # level 0: image -> grid; level l: grid l-1 -> grid l
    codebook_size: tuple[int, ...] = (512, 512)
    code_dim: tuple[int, ...] = (64, 64)
    commitment_weight: float = 0.25  # beta of VQ-VAE
    ema: bool = True  # EMA codebook (VQ-VAE-2, App. A)
    decay: float = 0.99
    dead_after: int = 200  # training steps before an unused code is re-seeded
    # Extra residual blocks in the decoder trunk (bottom grid), each starting as the identity: a
    # trained model grows decoder capacity without changing its encoder, symbols or prior.
    refine_blocks: int = 0
    # Residual blocks at the decoder's finest feature map (before its last layer: half resolution for
    # an x4 grid), also starting as the identity: the trunk works on the coarse grid, and the last
    # upsampling steps were linear but for one ReLU.
    tail_blocks: int = 0

    def __post_init__(self) -> None:
        for name in _PER_LEVEL:  # lists from JSON or callers become tuples
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        lengths = {len(getattr(self, name)) for name in _PER_LEVEL}
        if len(lengths) != 1 or not self.downsample:
            raise ValueError(f"{', '.join(_PER_LEVEL)} need the same length >= 1, got {self}")
        if any(d < 1 or d & (d - 1) for d in self.downsample):
            raise ValueError(f"downsample factors must be powers of two, got {self.downsample}")
        if self.channels < 2 or self.channels % 2:
            raise ValueError(f"channels must be even, got {self.channels}")
        for name in GROWABLE_BLOCKS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def levels(self) -> int:
        return len(self.downsample)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples stay tuples; a JSON round trip turns them into lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQVAE2Config:
        """Inverse of to_dict; accepts lists for tuples; unknown keys raise ValueError."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown VQVAE2Config keys: {sorted(unknown)}")
        return cls(**d)


class VQVAE2Output(NamedTuple):
    """x_hat (B, 3, H, W) float32 (not clamped); vq_loss () float32; symbols per level (B, h_l, w_l) int64."""

    x_hat: Tensor
    vq_loss: Tensor
    symbols: list[Tensor]


class OutputAffine(NamedTuple):
    """A per-image correction of the decoder's output (`vqcodec.adapt`): the last features become
    features * scale + shift (per channel, (C,) each), then offset (3,) is added to each colour.
    A scale of shape (3, C) scales each channel's contribution to each colour separately."""

    scale: Tensor
    shift: Tensor
    offset: Tensor


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), channels preserved; identity=True starts as x -> x."""

    def __init__(self, channels: int, res_channels: int, identity: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, res_channels, 3, padding=1),
            nn.ReLU(), nn.Conv2d(res_channels, channels, 1),
        )
        if identity:  # zero output conv: adding the block leaves a trained decoder's output unchanged
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _steps(factor: int) -> int:
    """Number of stride-2 stages for a power-of-two factor."""
    return int(math.log2(factor))


def _encoder(cfg: VQVAE2Config, c_in: int, factor: int) -> nn.Sequential:
    """(B, c_in, h, w) -> (B, channels, h/factor, w/factor): stride-2 4x4 convs, 3x3 conv, res blocks."""
    ch = cfg.channels
    layers: list[nn.Module] = []
    width = c_in
    for i in range(_steps(factor)):
        out = ch // 2 if i < _steps(factor) - 1 else ch
        layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
        width = out
    layers.append(nn.Conv2d(width, ch, 3, padding=1))
    layers += [ResBlock(ch, cfg.res_channels) for _ in range(cfg.res_blocks)]
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _decoder(cfg: VQVAE2Config, c_in: int, c_out: int, factor: int) -> nn.Sequential:
    """(B, c_in, h, w) -> (B, c_out, h*factor, w*factor): 3x3 conv, res blocks, transposed 4x4 convs."""
    ch = cfg.channels
    layers: list[nn.Module] = [nn.Conv2d(c_in, ch, 3, padding=1)]
    layers += [ResBlock(ch, cfg.res_channels) for _ in range(cfg.res_blocks)]
    layers.append(nn.ReLU())
    width = ch
    for i in range(_steps(factor)):
        last = i == _steps(factor) - 1
        out = c_out if last else ch // 2
        layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
        width = out
    if factor == 1:
        layers.append(nn.Conv2d(width, c_out, 3, padding=1))
    return nn.Sequential(*layers)


def _upsampler(dim: int, factor: int) -> nn.Sequential:
    """(B, dim, h, w) -> (B, dim, h*factor, w*factor) by transposed 4x4 convs (ReLU between)."""
    layers: list[nn.Module] = []
    for i in range(_steps(factor)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


class VQVAE2(nn.Module):
    """Hierarchical VQ-VAE: top-down quantization, one image decoder over all levels.

    Two levels, downsample (4, 2) shown; L levels repeat the middle column::

        x (B,3,H,W) ─pad─► encoders[0] ─► f0 (B,C,H/4,W/4) ─► encoders[1] ─► f1 (B,C,H/8,W/8)
                                              │                                   │ pre_quant[1]
                                              │                              quantizers[1] ─► q1, symbols[1]
                                              │                                   │ cond_decoders[0] (x2)
                                        cat(f0, d1) ─pre_quant[0]─► quantizers[0] ─► q0, symbols[0]
        decoder(cat(q0, upsamplers[0](q1))) ─► x_hat (B,3,H,W) ─crop─►

    Inside `decoder`: 3x3 conv and res blocks, then `refine` (bottom grid), the upsampling steps,
    `tail` (the finest feature map) and the last layer. Inputs are in [0, 1] and centred
    internally; x_hat is not clamped.
    """

    def __init__(self, config: VQVAE2Config) -> None:
        super().__init__()
        self.config = cfg = config
        levels, ch = cfg.levels, cfg.channels
        self.encoders = nn.ModuleList(
            _encoder(cfg, 3 if i == 0 else ch, cfg.downsample[i]) for i in range(levels))
        # Level i < L-1 sees its own features and the decoded level above (cond_decoders[i]).
        self.pre_quant = nn.ModuleList(
            nn.Conv2d(ch + (cfg.code_dim[i] if i < levels - 1 else 0), cfg.code_dim[i], 1)
            for i in range(levels))
        self.quantizers = nn.ModuleList(
            VectorQuantizer(cfg.code_dim[i], cfg.codebook_size[i], commitment_weight=cfg.commitment_weight,
                            ema=cfg.ema, decay=cfg.decay, dead_after=cfg.dead_after)
            for i in range(levels))
        self.cond_decoders = nn.ModuleList(
            _decoder(cfg, cfg.code_dim[i + 1], cfg.code_dim[i], cfg.downsample[i + 1])
            for i in range(levels - 1))
        # upsamplers[i - 1] brings level i to the bottom grid.
        self.upsamplers = nn.ModuleList(
            _upsampler(cfg.code_dim[i], math.prod(cfg.downsample[1 : i + 1])) for i in range(1, levels))
        self.decoder = _decoder(cfg, sum(cfg.code_dim), 3, cfg.downsample[0])
        # Run after the decoder's own res blocks (decoder[:_trunk_end]), before its upsampling.
        self.refine = nn.Sequential(*(ResBlock(ch, ch, identity=True) for _ in range(cfg.refine_blocks)))
        # Run between the decoder's last two layers, at the width its last layer reads.
        tail_width = self.decoder[-1].in_channels
        self.tail = nn.Sequential(*(ResBlock(tail_width, tail_width, identity=True) for _ in range(cfg.tail_blocks)))
        self._trunk_end = 1 + cfg.res_blocks

    @property
    def multiple(self) -> int:
        """Image sides are padded to a multiple of this (the product of downsample)."""
        return math.prod(self.config.downsample)

    def latent_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h_l, w_l) of each level's symbol map for an H x W image, bottom first."""
        m = self.multiple
        h, w = -(-height // m) * m, -(-width // m) * m
        sizes = []
        for factor in self.config.downsample:
            h, w = h // factor, w // factor
            sizes.append((h, w))
        return sizes

    def _pad(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> centred (B, 3, H', W'), replicate-padded to the multiple.

        Replicate padding: a flat continuation of the border is cheap to code.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        m = self.multiple
        pad_h, pad_w = -x.shape[2] % m, -x.shape[3] % m
        x = x - 0.5
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return x

    def _features(self, x: Tensor) -> list[Tensor]:
        """Encoder features per level, bottom first, each (B, channels, h_l, w_l)."""
        features = []
        for encoder in self.encoders:
            x = encoder(x)
            features.append(x)
        return features

    def _quantizer_input(self, level: int, features: list[Tensor], above: Tensor | None) -> Tensor:
        """(B, code_dim[l], h_l, w_l) pre-quantization vectors, given the quantized level above."""
        f = features[level]
        if above is not None:
            f = torch.cat([f, self.cond_decoders[level](above)], dim=1)
        return self.pre_quant[level](f)

    def _last_features(self, quantized: list[Tensor]) -> Tensor:
        """Quantized maps per level (bottom first) -> the feature map the decoder's last layer reads."""
        maps = [quantized[0]] + [up(q) for up, q in zip(self.upsamplers, quantized[1:])]
        trunk = self.decoder[: self._trunk_end](torch.cat(maps, dim=1))
        return self.tail(self.decoder[self._trunk_end : -1](self.refine(trunk)))

    def _decode_quantized(self, quantized: list[Tensor], affine: OutputAffine | None = None) -> Tensor:
        """Quantized maps per level (bottom first) -> padded x_hat (B, 3, H', W') in image range.

        affine: a per-image correction of the last features and colours (`vqcodec.adapt`)."""
        return self.last_layer_output(self._last_features(quantized), affine)

    def last_layer_output(self, features: Tensor, affine: OutputAffine | None = None) -> Tensor:
        """The decoder's last layer: last features (B, C, h, w) -> padded x_hat (B, 3, H', W') in
        image range, with the per-image correction `affine` (`vqcodec.adapt`) if given."""
        if affine is None:
            return self.decoder[-1](features) + 0.5
        offset = affine.offset.view(1, -1, 1, 1)
        if affine.scale.dim() == 1:
            features = features * affine.scale.view(1, -1, 1, 1) + affine.shift.view(1, -1, 1, 1)
            return self.decoder[-1](features) + 0.5 + offset
        # A scale per channel and colour scales the last layer's weights, colour by colour.
        last = self.decoder[-1]
        weight = last.weight * affine.scale.t()[:, :, None, None]  # (C, 3, k, k) times (C, 3)
        shifts = affine.shift.view(1, -1, 1, 1).expand_as(features)
        out = (F.conv_transpose2d(features, weight, last.bias, last.stride, last.padding, last.output_padding)
               + F.conv_transpose2d(shifts, last.weight, None, last.stride, last.padding, last.output_padding))
        return out + 0.5 + offset

    def last_layer(self) -> nn.Module:
        """The decoder's last layer: linear in its input, which `vqcodec.adapt` relies on."""
        return self.decoder[-1]

    def last_features(self, symbols: list[Tensor], *, tile_pixels: int = DECODE_TILE_PIXELS) -> Tensor:
        """Symbols per level (bottom first) -> the padded image's last features (B, C, H'/s, W'/s),
        s the last layer's stride; tile by tile like `decode`, and equal to the whole-image map."""
        quantized = [q.lookup(s) for q, s in zip(self.quantizers, symbols)]
        tile = tile_pixels // self.config.downsample[0]
        stride = self.last_layer().stride[0]
        if max(quantized[0].shape[-2:]) > tile:
            return self._run_tiles(self._last_features, quantized, tile, self.last_layer().in_channels,
                                   self.config.downsample[0] // stride)
        return self._last_features(quantized)

    def decoder_modules(self) -> list[nn.Module]:
        """The modules that turn quantized maps into pixels (what decoder fine-tuning trains)."""
        return [*self.upsamplers, self.decoder, self.refine, self.tail]

    @staticmethod
    def _hide_lower_levels(quantized: list[Tensor], hide: Tensor) -> list[Tensor]:
        """Zero the maps below the top level for the samples where hide (B,) is True."""
        keep = (~hide).to(quantized[0].dtype).view(-1, 1, 1, 1)
        return [q * keep for q in quantized[:-1]] + [quantized[-1]]

    def forward(self, x: Tensor, hide_lower: Tensor | None = None) -> VQVAE2Output:
        """Training/eval pass. x (B, 3, H, W) float32 in [0, 1], any H, W.

        hide_lower (B,) bool, training only: those samples are decoded from the top level alone.
        Without that pressure the decoder learns to rely on the bottom level, the top encoder's
        output shrinks to a point and its codebook collapses (measured: perplexity 2 of 256 codes).
        """
        features = self._features(self._pad(x))
        levels = self.config.levels
        quantized: list[Tensor] = [x.new_empty(0)] * levels
        symbols: list[Tensor] = [x.new_empty(0, dtype=torch.int64)] * levels
        vq_loss = x.new_zeros((), dtype=torch.float32)
        above: Tensor | None = None
        for level in reversed(range(levels)):
            out = self.quantizers[level](self._quantizer_input(level, features, above))
            quantized[level], symbols[level], above = out.quantized, out.symbols, out.quantized
            vq_loss = vq_loss + out.loss
        if hide_lower is not None and levels > 1:
            quantized = self._hide_lower_levels(quantized, hide_lower)
        x_hat = self._decode_quantized(quantized)[:, :, : x.shape[2], : x.shape[3]]
        return VQVAE2Output(x_hat, vq_loss, symbols)

    @torch.no_grad()
    def encode(self, x: Tensor) -> list[Tensor]:
        """x (B, 3, H, W) float32 in [0, 1] -> symbols per level, bottom first, (B, h_l, w_l) int64.

        Pure: uses nearest/lookup, so no codebook state changes even in training mode.
        """
        return self.latent_vectors(x)[1]

    @torch.no_grad()
    def latent_vectors(self, x: Tensor, *, tile_pixels: int = ENCODE_TILE_PIXELS) -> tuple[list[Tensor], list[Tensor]]:
        """x (B, 3, H, W) in [0, 1] -> (the vectors each level quantizes, their nearest codes), bottom first.

        Vectors (B, D_l, h_l, w_l) float, codes (B, h_l, w_l) int64. Top-down: a level's vectors
        depend on the nearest codes of the level above. Images larger than tile_pixels on a side
        are encoded in tiles of about that side, each with the encoder's reach around it
        (`encode_halo`), so memory stays bounded; the tiles match the whole-image pass up to
        float rounding.
        """
        padded = self._pad(x)
        scale = self.config.downsample[0]
        height, width = padded.shape[-2] // scale, padded.shape[-1] // scale
        tile = tile_pixels // scale
        if max(height, width) <= tile:
            return self._latents(padded)
        ratios = self.level_ratios()
        batch = padded.shape[0]
        vectors = [padded.new_empty(batch, dim, height // f, width // f) for dim, f in zip(self.config.code_dim, ratios)]
        symbols = [torch.empty(batch, height // f, width // f, dtype=torch.int64, device=padded.device) for f in ratios]
        for t in self.tiles(height, width, tile, halo=self.encode_halo()):
            part_vectors, part_symbols = self._latents(t.crop_pixels(padded, scale))
            t.paste(vectors, part_vectors, ratios)
            t.paste(symbols, part_symbols, ratios)
        return vectors, symbols

    def _latents(self, padded: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """`latent_vectors` of an image already padded and centred by `_pad` (or a crop of one)."""
        features = self._features(padded)
        vectors: list[Tensor] = [padded.new_empty(0)] * self.config.levels
        symbols: list[Tensor] = [padded.new_empty(0, dtype=torch.int64)] * self.config.levels
        above: Tensor | None = None
        for level in reversed(range(self.config.levels)):
            quantizer = self.quantizers[level]
            vectors[level] = self._quantizer_input(level, features, above)
            symbols[level] = quantizer.nearest(vectors[level])
            above = quantizer.lookup(symbols[level])
        return vectors, symbols

    def decode_vectors(self, quantized: list[Tensor], size: tuple[int, int],
                       affine: OutputAffine | None = None) -> Tensor:
        """Quantized maps per level, bottom first, (B, D_l, h_l, w_l) -> x_hat (B, 3, *size).

        Differentiable (unlike `decode`'s symbol lookup): encoder-side optimization runs through it.
        """
        return self._decode_quantized(quantized, affine)[:, :, : size[0], : size[1]]

    def decode(self, symbols: list[Tensor], size: tuple[int, int] | None = None, *,
               tile_pixels: int = DECODE_TILE_PIXELS, affine: OutputAffine | None = None) -> Tensor:
        """Symbols per level, bottom first, (B, h_l, w_l) int64 -> x_hat (B, 3, H, W) float32.

        size=(H, W) crops the padded reconstruction back to the original image size. Images larger
        than tile_pixels on a side are decoded in tiles of about that side, each with the
        decoder's receptive field around it (`decode_halo`), so memory stays bounded; the tiles
        match the whole-image decode up to float rounding. affine: as for `_decode_quantized`.
        """
        if len(symbols) != self.config.levels:
            raise ValueError(f"expected {self.config.levels} symbol maps, got {len(symbols)}")
        quantized = [q.lookup(s) for q, s in zip(self.quantizers, symbols)]
        tile = tile_pixels // self.config.downsample[0]
        if max(quantized[0].shape[-2:]) > tile:
            x_hat = self._run_tiles(lambda part: self._decode_quantized(part, affine), quantized, tile, 3,
                                    self.config.downsample[0])
        else:
            x_hat = self._decode_quantized(quantized, affine)
        if size is not None:
            x_hat = x_hat[:, :, : size[0], : size[1]]
        return x_hat

    def decode_halo(self) -> int:
        """Bottom-grid cells of context each side of a tile: an upper bound of the decoder's reach.

        3x3 convolutions on the bottom grid (first conv, res and refine blocks) reach one cell each;
        the 4x4 stride-2 transposed convolutions of the image decoder reach one cell of their input
        (under two cells in all), tail blocks one pixel of the half-resolution map each, and a
        level's upsampler under two of that level's cells. Rounded up to whole top-level cells.
        """
        cfg = self.config
        coarsest = self.level_ratios()[-1]  # bottom cells per top-level cell
        reach = 1 + cfg.res_blocks + cfg.refine_blocks + 2 + cfg.tail_blocks + 1 + 2 * coarsest
        return -(-reach // coarsest) * coarsest

    def encode_halo(self) -> int:
        """Bottom-grid cells of context each side of a tile: an upper bound of the encoder's reach.

        Each level's encoder reaches under two of its own cells through its strided 4x4
        convolutions, one through its 3x3 convolution and one per res block, on top of the reach
        of the level below whose features it reads; a level's vectors also read the decoded codes
        of the level above (`cond_decoders`: a 3x3 convolution, res blocks and under two of that
        level's cells of transposed convolutions). Rounded up to whole top-level cells.
        """
        ratios = self.level_ratios()
        own = 2 + 1 + self.config.res_blocks
        conditioning = 1 + self.config.res_blocks + 2
        reach = sum(own * f for f in ratios) + sum(conditioning * f for f in ratios[1:])
        return -(-reach // ratios[-1]) * ratios[-1]

    def level_ratios(self) -> list[int]:
        """Bottom-grid cells per cell of each level, bottom first (1 for the bottom)."""
        return [math.prod(self.config.downsample[1 : i + 1]) for i in range(self.config.levels)]

    def tiles(self, height: int, width: int, tile: int, *, halo: int | None = None) -> list[Tile]:
        """Tiles of about `tile` cells a side (whole top-level cells) covering a height x width bottom
        grid, row by row, each with `halo` cells of context around it (default: `decode_halo`)."""
        step = self.level_ratios()[-1]
        halo = self.decode_halo() if halo is None else halo
        tile = max(step, tile // step * step)
        return [Tile(top, left, min(tile, height - top), min(tile, width - left),
                     max(0, top - halo), min(height, top + tile + halo),
                     max(0, left - halo), min(width, left + tile + halo))
                for top in range(0, height, tile) for left in range(0, width, tile)]

    def _run_tiles(self, run: Callable[[list[Tensor]], Tensor], quantized: list[Tensor], tile: int,
                   channels: int, scale: int) -> Tensor:
        """`run` (quantized maps -> a map of `channels` at `scale` x the bottom grid) tile by tile:
        bottom-grid tiles of `tile` cells plus the halo, each tile's interior pasted in place."""
        ratios = self.level_ratios()
        height, width = quantized[0].shape[-2:]
        out = quantized[0].new_empty(quantized[0].shape[0], channels, height * scale, width * scale)
        for t in self.tiles(height, width, tile):
            pixels = run(t.crop(quantized, ratios))
            rows, cols = t.rows * scale, t.cols * scale
            out[..., t.top * scale : t.top * scale + rows, t.left * scale : t.left * scale + cols] = \
                pixels[..., (t.top - t.r0) * scale :, (t.left - t.c0) * scale :][..., :rows, :cols]
        return out
