"""The codec: the one object that runs the whole flow in both directions.

```
compress:    image ─► image.to_tensor ─► resample (scaled members) ─► VQVAE2 encoder + rdo.optimize_symbols ─► symbol maps (bottom … top)
             adapt.fit (decoder adaptation: ~70 bytes of last-layer correction, when worth its bytes)
             for level top → bottom: prior stepper ─► logits ─► canonical probabilities ─► rANS chunk
             Header(model, digest, size, mode, order, map sizes, symbol CRC, adaptation) + chunks ─► bitstream.pack ─► bytes

decompress:  bytes ─► bitstream.unpack ─► for level top → bottom: stepper logits ─► rANS decode ─► symbols
             symbol CRC check ─► VQVAE2.decode (+ adaptation) ─► crop ─► resample back ─► image in the original mode
```

The encoder walks exactly the same decode schedule and calls the same `stepper.logits` as the
decoder, so both sides hand bit-identical probability tables to the coder. Coding runs the prior
on the CPU in exact integer arithmetic (`vqcodec.exact`, format versions 3 and 4), so a file decodes
whatever the thread count, CPU or GPU of either side; versions 1 and 2 were coded with the
float32 prior and decode only where float32 sums come out the same (same machine and threads).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from vqcodec import adapt, bitstream, entropy, exact, rdo, resample
from vqcodec.bitstream import ORDERS, Header
from vqcodec.checkpoint import load_model, weights_digest
from vqcodec.errors import BitstreamError, ImageError, ModelNotFoundError, VQCodecError
from vqcodec.image import MAX_PIXELS as MAX_IMAGE_PIXELS
from vqcodec.image import ImageInfo, ImageLike, error_weights, to_pil, to_tensor
from vqcodec.models import resolve, resolve_recorded
from vqcodec.prior import SymbolPrior
from vqcodec.vqvae import VQVAE2, OutputAffine

# Bottom-level symbols above which `estimate_bits` evaluates the prior in bands of rows: whole-map
# logits take 8 bytes per code and symbol (vqc-4: 1 GB at 2 MP, 6 GB at 12 MP).
ESTIMATE_IN_BANDS_ABOVE = 1 << 17
# Probabilities coded at once (symbols x codes): a fast-order step of a large map is coded in parts
# of this many, whose tables take about 40 bytes an entry on the way (2^22: about 170 MB).
CODING_PART_ENTRIES = 1 << 22

Order = Literal["fast", "raster"]


# Designs the encoder tries (vqcodec.adapt); the filter is fitted on top of the per-colour scales only,
# which keeps it to one extra decode.
ADAPTATION_DESIGNS = (adapt.FILM, adapt.PER_COLOUR, adapt.PER_COLOUR | adapt.LOOP_FILTER)


class Symbols(NamedTuple):
    """Symbol maps of one image: per level, bottom first, each (1, h, w) int64 on the CPU, and the
    decoder adaptation the file carries with them (None: decode with the model as it is)."""

    levels: list[torch.Tensor]
    info: ImageInfo
    adaptation: adapt.Adaptation | None = None


class Codec:
    """Compress images to .vqc bytes and back with one trained VQ-VAE-2 + PixelCNN prior."""

    def __init__(self, vqvae: VQVAE2, prior: SymbolPrior, *, name: str, digest: bytes, device: str = "cpu",
                 scale: float = 1.0):
        """scale: code images resampled by this factor (`vqcodec.resample`); files record only the
        name, so a name must always come with the same scale (the bundled family's do)."""
        try:
            self.scale = resample.check_scale(scale)
        except ValueError as err:
            raise VQCodecError(str(err)) from None
        self.vqvae = vqvae.eval().to(device)
        self.prior = prior.eval().cpu()  # float: encoder-side rate estimates and optimization
        self.exact_prior = exact.exact_prior(self.prior)  # coding: the same probabilities everywhere
        self.name = name
        self.digest = digest
        self.device = torch.device(device)

    @classmethod
    def load(cls, model: str | Path = "default", *, device: str = "cpu") -> Codec:
        """Load a bundled model by name ("default", "vqc-1" … "vqc-6") or a .safetensors path."""
        name, path, scale = resolve(model)
        device = _checked_device(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise VQCodecError("CUDA was requested but no CUDA device is available")
        try:
            vqvae, prior, _ = load_model(path, device="cpu")
        except VQCodecError:
            raise
        except Exception as err:  # corrupt or foreign weights files
            raise ModelNotFoundError(f"cannot load model {name!r} from {path}: {err}") from None
        if prior is None:
            raise ModelNotFoundError(f"model {name!r} has no prior: train one with `vqcodec train-prior`")
        return cls(vqvae, prior, name=name, digest=weights_digest(path), device=device, scale=scale)

    # ---- image <-> symbols -------------------------------------------------------------------

    def encode(self, image: ImageLike, *, order: Order = "fast", optimize: int = rdo.DEFAULT_STEPS,
               progress: rdo.Progress | None = None, adapt_decoder: bool = True) -> Symbols:
        """Image -> symbol maps (the tokens the prior codes) and the decoder adaptation.

        optimize: steps of rate-distortion optimization under `order`'s code lengths
        (`vqcodec.rdo`); 0 gives the nearest codes, the fastest encode.
        progress: called as progress(tiles done, tiles in all) while an image over 2 MP is
        optimised tile by tile (minutes on a CPU).
        adapt_decoder: fit the per-image decoder correction (`vqcodec.adapt`) and keep it when it
        is worth its bytes; False writes none (a little smaller file, a little worse picture).
        An image with transparency is coded for its composited picture: both steps weigh each
        pixel's error by its squared opacity (`image.error_weights`).
        """
        _check_order(order)
        if not isinstance(optimize, int) or isinstance(optimize, bool) or optimize < 0:
            raise VQCodecError(f"optimize must be a whole number of steps >= 0, got {optimize!r}")
        x, info = to_tensor(image)
        x = self._to_coded_size(x, info)
        weights = self._error_weights(info)
        # With adaptation, the optimisation judges pictures through the correction fitted to the
        # nearest codes (when that one is worth sending), then the correction is refitted to its result.
        pixels = info.height * info.width  # the image's own pixels (not the coded ones) pay for the bytes
        correction = (lambda nearest: self._correction(nearest, x, pixels, weights)) if adapt_decoder else None
        levels = rdo.optimize_symbols(self.vqvae, self.prior, x.to(self.device), order, optimize, progress, correction,
                                      weights.to(self.device) if weights is not None else None)
        levels = [s.cpu().long() for s in levels]
        return Symbols(levels, info, self._adaptation(levels, x, pixels, weights) if adapt_decoder else None)

    def _error_weights(self, info: ImageInfo) -> torch.Tensor | None:
        """Each coded pixel's share of the error (`image.error_weights`) at the coded size; None if opaque."""
        weights = error_weights(info)
        if weights is None:
            return None
        return resample.resize(weights, self._coded_size(info.height, info.width)).clamp_(0, 1)

    def _correction(self, levels: list[torch.Tensor], x: torch.Tensor, pixels: int,
                    weights: torch.Tensor | None = None) -> OutputAffine | None:
        # The optimisation differentiates through the last layer's correction only, not the filter.
        adaptation = self._adaptation(levels, x, pixels, weights, (adapt.FILM, adapt.PER_COLOUR))
        return adaptation.affine(self.device) if adaptation is not None else None

    def _adaptation(self, levels: list[torch.Tensor], x: torch.Tensor, pixels: int, weights: torch.Tensor | None = None,
                    designs: tuple[int, ...] = ADAPTATION_DESIGNS) -> adapt.Adaptation | None:
        """The best decoder adaptation for these symbols of x (coded size), if any is worth its bytes;
        weights: each pixel's share of the error (None: all alike)."""
        fits = adapt.fit(self.vqvae, [s.to(self.device) for s in levels], x, designs, weights)
        fits = [f for f in fits if len(adapt.to_bytes(f.adaptation)) <= bitstream.MAX_ADAPTATION]
        return adapt.best(fits, pixels)

    @torch.no_grad()
    def decode(self, symbols: Symbols) -> Image.Image:
        """Symbol maps -> image in the original mode."""
        self._check_symbols(symbols)
        return to_pil(self._reconstruct(symbols), symbols.info)

    def _check_symbols(self, symbols: Symbols) -> None:
        """Symbols handed in by a caller must fit this model: level count, map sizes, code range."""
        if not self._fits([s.shape[-2:] for s in symbols.levels], symbols.info.height, symbols.info.width):
            raise VQCodecError(f"symbol maps {[tuple(s.shape) for s in symbols.levels]} do not fit a "
                               f"{symbols.info.width}x{symbols.info.height} image under model {self.name!r}")
        for level, (s, size) in enumerate(zip(symbols.levels, self.vqvae.config.codebook_size)):
            if s.numel() and (int(s.min()) < 0 or int(s.max()) >= size):
                raise VQCodecError(f"level {level} holds a symbol outside its codebook (0..{size - 1})")
        # The alpha plane itself is checked by decoding it: `decode` does that anyway (to_pil),
        # `compress_symbols` before it writes the plane into a file.
        if symbols.info.alpha and symbols.info.mode != "RGBA":
            raise VQCodecError(f"an alpha plane needs mode 'RGBA', not {symbols.info.mode!r}")
        adaptation = symbols.adaptation
        if adaptation is not None and (not isinstance(adaptation, adapt.Adaptation) or len(adaptation.values)
                                       != adapt.parameter_count(self.vqvae, adaptation.design)):
            raise VQCodecError(f"the adaptation does not fit model {self.name!r} (its design {adaptation.design} has "
                               f"{adapt.parameter_count(self.vqvae, adaptation.design)} parameters)")

    def _reconstruct(self, symbols: Symbols) -> torch.Tensor:
        levels = [s.to(self.device) for s in symbols.levels]
        size = (symbols.info.height, symbols.info.width)
        affine = symbols.adaptation.affine(self.device) if symbols.adaptation is not None else None
        coded = self.vqvae.decode(levels, size=self._coded_size(*size), affine=affine).float().cpu()
        return resample.resize(adapt.apply_loop_filter(coded, symbols.adaptation), size)

    def _coded_size(self, height: int, width: int) -> tuple[int, int]:
        return resample.coded_size(height, width, self.scale)

    def _to_coded_size(self, x: torch.Tensor, info: ImageInfo) -> torch.Tensor:
        height, width = self._coded_size(info.height, info.width)
        if height * width > MAX_IMAGE_PIXELS or max(height, width) > bitstream.MAX_SIDE:
            raise ImageError(f"{info.width}x{info.height} image is too large for model {self.name!r}, which codes "
                             f"it at {width}x{height} (x{self.scale:g}); at most {MAX_IMAGE_PIXELS} pixels")
        return resample.resize(x, (height, width))

    # ---- bytes ---------------------------------------------------------------------------------

    def compress(self, image: ImageLike, *, order: Order = "fast", optimize: int = rdo.DEFAULT_STEPS,
                 progress: rdo.Progress | None = None, adapt_decoder: bool = True) -> bytes:
        """Image (PIL, uint8 array, float tensor or image file path) -> .vqc bytes.

        optimize: encoder effort, steps of rate-distortion optimization of the symbols (0: nearest
        codes, fastest); files decode the same way whatever it was. progress, adapt_decoder: as in
        `encode`.
        """
        symbols = self.encode(image, order=order, optimize=optimize, progress=progress, adapt_decoder=adapt_decoder)
        return self.compress_symbols(symbols, order=order)

    def compress_symbols(self, symbols: Symbols, *, order: Order = "fast") -> bytes:
        """Symbols (from `encode`, or edited) -> .vqc bytes that decode to exactly these symbols."""
        _check_order(order)
        self._check_symbols(symbols)
        symbols.info.alpha_plane  # an ImageError if the alpha field is not this image's plane
        symbols = Symbols([s.cpu().long() for s in symbols.levels], symbols.info, symbols.adaptation)
        chunks = [self._encode_level(symbols.levels, level, order) for level in _top_down(symbols.levels)]
        return bitstream.pack(self._header(symbols, order), chunks)

    def _header(self, symbols: Symbols, order: str) -> Header:
        return Header(
            model_name=self.name,
            weights_digest=self.digest,
            width=symbols.info.width,
            height=symbols.info.height,
            mode=symbols.info.mode,
            order=order,
            level_shapes=tuple((int(s.shape[1]), int(s.shape[2])) for s in symbols.levels),
            symbols_crc=symbols_crc(symbols.levels),
            adaptation=adapt.to_bytes(symbols.adaptation) if symbols.adaptation is not None else b"",
            alpha=symbols.info.alpha,
        )

    def decompress(self, data: bytes) -> Image.Image:
        """.vqc bytes -> PIL image of the original size and mode."""
        symbols = self.decode_symbols(data)
        with torch.no_grad():
            return self.decode(symbols)

    def decompress_tensor(self, data: bytes) -> torch.Tensor:
        """.vqc bytes -> (1, 3, H, W) float32 reconstruction in [0, 1] (not rounded to 8 bits): the
        colours; an RGBA file's alpha plane comes with `decompress`."""
        symbols = self.decode_symbols(data)
        with torch.no_grad():
            return self._reconstruct(symbols).clamp(0, 1)

    def decode_symbols(self, data: bytes) -> Symbols:
        """.vqc bytes -> the symbol maps, entropy-decoded and checked against the stored CRC."""
        header, chunks = bitstream.unpack(data)
        self._check_header(header)
        levels = [torch.zeros((1, h, w), dtype=torch.int64) for h, w in header.level_shapes]
        for chunk, level in zip(chunks, _top_down(levels)):
            self._decode_level(chunk, levels, level, header.order, header.version)
        if symbols_crc(levels) != header.symbols_crc:
            raise BitstreamError("decoded symbols fail their checksum: the file is corrupt or the prior diverged")
        return Symbols(levels, _read_info(header), self._read_adaptation(header))

    def _read_adaptation(self, header: Header) -> adapt.Adaptation | None:
        if not header.adaptation:
            return None
        try:
            return adapt.from_bytes(header.adaptation, self.vqvae.last_layer().in_channels,
                                    with_design=header.version >= bitstream.DESIGN_VERSION)
        except ValueError as err:
            raise BitstreamError(f"{err}: the file is corrupt") from None

    def compress_batch(self, images: Iterable[ImageLike], *, order: Order = "fast",
                       optimize: int = rdo.DEFAULT_STEPS, adapt_decoder: bool = True) -> list[bytes]:
        """Compress several images; each result is an independent .vqc file.

        Raises the first error, of the same VQCodecError class, with the failing item's index.
        """
        return _each(images, lambda image: self.compress(image, order=order, optimize=optimize,
                                                         adapt_decoder=adapt_decoder))

    def decompress_batch(self, files: Iterable[bytes]) -> list[Image.Image]:
        """Decompress several .vqc files (all made by this model); errors name the failing index."""
        return _each(files, self.decompress)

    def estimate_bits(self, image: ImageLike, *, order: Order = "fast", optimize: int = rdo.DEFAULT_STEPS,
                      container: bool = False, adapt_decoder: bool = True) -> float:
        """Cross-entropy of the image's symbols under the prior, in bits (no coding).

        container: add the file's header (with the decoder adaptation `adapt_decoder` fits), chunk
        lengths and checksum, which `compress` writes around the coded symbols: then the estimate is
        the file's size up to the coder's few bytes.
        """
        symbols = self.encode(image, order=order, optimize=optimize, adapt_decoder=adapt_decoder and container)
        return self.file_bits(symbols, order=order) if container else self.symbol_bits(symbols, order=order)

    def file_bits(self, symbols: Symbols, *, order: Order = "fast") -> float:
        """Estimated size in bits of the .vqc file of these symbols: their cross-entropy under the prior
        plus the header, chunk lengths and checksum around them (exact up to the coder's few bytes)."""
        container = bitstream.pack(self._header(symbols, order), [b""] * len(symbols.levels))
        return self.symbol_bits(symbols, order=order) + 8 * len(container)

    @torch.no_grad()
    def symbol_bits(self, symbols: Symbols, *, order: Order = "fast") -> float:
        """Cross-entropy of given symbol maps under the prior, in bits: what coding them would take."""
        _check_order(order)
        if symbols.levels[0].numel() > ESTIMATE_IN_BANDS_ABOVE:
            return self.prior.bits_in_bands(symbols.levels, order)
        return float(sum(b.sum() for b in self.prior.bits(symbols.levels, order)))

    # ---- one level of entropy coding -------------------------------------------------------------

    @torch.no_grad()
    def _encode_level(self, levels: list[torch.Tensor], level: int, order: str,
                      version: int = bitstream.VERSION) -> bytes:
        stepper = self._stepper(levels, level, order, version)
        flat = levels[level].reshape(-1)
        encoder = entropy.SymbolEncoder()
        # The encoder knows every symbol, so it computes the steps last to first, as rANS pushes
        # them, and holds one part of one probability table at a time (all of a 12 MP image's: 1.5 GB).
        for step in reversed(range(len(stepper.schedule))):
            positions, part = stepper.schedule[step], stepper.step_logits(step, levels[level])
            for lo, hi in reversed(self._parts(len(positions), level, version)):
                encoder.push(flat[positions[lo:hi]].numpy(), entropy.canonical_probabilities(part(lo, hi).numpy()))
        return encoder.finish()

    @torch.no_grad()
    def _decode_level(self, chunk: bytes, levels: list[torch.Tensor], level: int, order: str,
                      version: int = bitstream.VERSION) -> None:
        stepper = self._stepper(levels, level, order, version)
        decoder = entropy.SymbolDecoder(chunk)
        flat = levels[level].view(-1)
        codebook_size = self.prior.config.codebook_size[level]
        for step, positions in enumerate(stepper.schedule):
            part = stepper.step_logits(step, levels[level])
            for lo, hi in self._parts(len(positions), level, version):
                values = decoder.decode(entropy.canonical_probabilities(part(lo, hi).numpy()))
                if values.size and (values.min() < 0 or values.max() >= codebook_size):
                    raise BitstreamError("decoded symbol outside the codebook: the file is corrupt")
                flat[positions[lo:hi]] = torch.from_numpy(values.astype(np.int64))
        decoder.finish()

    def _parts(self, count: int, level: int, version: int) -> list[tuple[int, int]]:
        """Slices of a step's `count` positions, coded one after another: each holds at most
        CODING_PART_ENTRIES probabilities. The coded symbols and their order are the same as in
        one piece, so the bytes are too; format 2's float32 prior keeps whole steps, whose sums
        a part could round differently."""
        size = max(1, CODING_PART_ENTRIES // self.prior.config.codebook_size[level])
        if version < 3 or count <= size:
            return [(0, count)]
        return [(lo, min(lo + size, count)) for lo in range(0, count, size)]

    def _stepper(self, levels: list[torch.Tensor], level: int, order: str, version: int = bitstream.VERSION):
        """The decode steps of a format version: version 1 has the one-position raster schedule,
        versions 1 and 2 the float32 prior, version 3 the exact one."""
        height, width = levels[level].shape[1:]
        context = levels[level + 1] if level + 1 < len(levels) else None
        prior = self.exact_prior if version >= 3 else self.prior
        return prior.stepper(order, level, int(height), int(width), context,  # type: ignore[operator]
                             wavefront=version >= 2)

    def _fits(self, shapes: Iterable[Sequence[int]], height: int, width: int) -> bool:
        """Whether symbol-map sizes (bottom first) are the ones this model gives a height x width image."""
        expected = self.vqvae.latent_sizes(*self._coded_size(height, width))
        return [tuple(s) for s in shapes] == [tuple(s) for s in expected]

    def _check_header(self, header: Header) -> None:
        if header.model_name != self.name:
            raise BitstreamError(f"file was made by model {header.model_name!r}, not {self.name!r}")
        if header.weights_digest != self.digest:
            raise BitstreamError(f"file was made by different weights of model {self.name!r} (digest mismatch; a "
                                 f"bundled model's weights change between vqcodec versions: decode it with the "
                                 f"version that made it)")
        coded_height, coded_width = self._coded_size(header.height, header.width)
        if coded_height * coded_width > MAX_IMAGE_PIXELS:  # no encoder made it; a forged size costs minutes
            raise BitstreamError(f"file claims a {header.width}x{header.height} image, more than the "
                                 f"{MAX_IMAGE_PIXELS} pixels vqcodec encodes with model {self.name!r}")
        if not self._fits(header.level_shapes, header.height, header.width):
            raise BitstreamError(f"symbol map sizes {header.level_shapes} do not fit a {header.width}x{header.height} image")


def _read_info(header: Header) -> ImageInfo:
    """The decoded image's mode and size, and its alpha plane, checked to decode to that size."""
    info = ImageInfo(header.mode, header.height, header.width, header.alpha)
    try:
        info.alpha_plane  # decoded now (and kept for the image) so that a corrupt plane fails early
    except ImageError as err:
        raise BitstreamError(f"alpha field: {err}: the file is corrupt") from None
    return info


def symbols_crc(levels: list[torch.Tensor]) -> int:
    """CRC32 of the symbol maps in the container's convention (int32 little-endian, top level first)."""
    return bitstream.symbols_checksum(s.cpu().numpy().astype("<i4").tobytes() for s in reversed(levels))


def _top_down(levels: list) -> list[int]:
    return list(reversed(range(len(levels))))


def _each(items: Iterable[Any], work: Callable[[Any], Any]) -> list[Any]:
    results = []
    for index, item in enumerate(items):
        try:
            results.append(work(item))
        except VQCodecError as err:
            raise type(err)(f"item {index}: {err}") from None
    return results


def _checked_device(device: str | torch.device) -> str:
    """"cpu", "cuda" or "cuda:N" (a torch.device too); other device kinds are not supported."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise VQCodecError(f"unsupported device {device!r}: use 'cpu' or 'cuda' ('cuda:N')")
    return str(device)


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise VQCodecError(f"unknown decode order {order!r}; choose one of {', '.join(ORDERS)}")


_CACHE: dict[tuple[str, str], Codec] = {}
_CACHE_LOCK = threading.Lock()


def cached_codec(model: str | Path, device: str = "cpu") -> Codec:
    """Codec.load with a per-process cache, for the module-level convenience functions."""
    key = (str(model), device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Codec.load(model, device=device)
        return _CACHE[key]


def compress(image: ImageLike, *, model: str | Path = "default", order: Order = "fast",
             optimize: int = rdo.DEFAULT_STEPS, adapt_decoder: bool = True) -> bytes:
    """Compress one image with a bundled model (loaded once per process); see `Codec.compress`."""
    return cached_codec(model).compress(image, order=order, optimize=optimize, adapt_decoder=adapt_decoder)


def decompress(data: bytes, *, model: str | Path | None = None) -> Image.Image:
    """Decompress a .vqc file with the bundled model named in its header (or the model given)."""
    return cached_codec(model or resolve_recorded(bitstream.read_header(data).model_name)).decompress(data)
