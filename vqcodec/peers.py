"""The codecs a benchmark compares: vqcodec models and its peers, as `CodecUnderTest`s.

  * Pillow: JPEG, WebP, AVIF (two settings), every encoder option written out;
  * CompressAI models with weights trained by benchmarks/train_compressai.py,
    coded to real bitstreams with `compress()` in a minimal container;
  * vqcodec's bundled models, one curve per decode order.

`codecs_from_specs` turns command-line names ("jpeg", "avif", "compressai",
"vqcodec-raster", ...) into codecs.
"""

from __future__ import annotations

import io
import json
import struct
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, features

from vqcodec.rd import CodecUnderTest, OperatingPoint

JPEG_QUALITIES = (5, 10, 15, 20, 30, 40, 50, 60, 75, 90)
WEBP_QUALITIES = (1, 5, 10, 20, 30, 40, 50, 60, 75, 90)
AVIF_QUALITIES = (5, 10, 15, 20, 30, 40, 50, 60, 75)
# Speed 2 costs 10-50 s per Kodak image on one thread: fewer points, same range.
AVIF_SLOW_QUALITIES = (10, 20, 30, 45, 60)

# name -> (Pillow format, save options, default qualities). Options are explicit even
# where they equal Pillow's defaults, so the results JSON states every setting.
PILLOW_PEERS: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "jpeg": ("JPEG", {"subsampling": "4:2:0", "optimize": False, "progressive": False}, JPEG_QUALITIES),
    "webp": ("WEBP", {"method": 4, "lossless": False}, WEBP_QUALITIES),
    # Pillow's AVIF defaults (4:2:0, speed 6) ...
    "avif-420-s6": ("AVIF", {"subsampling": "4:2:0", "speed": 6, "codec": "aom", "range": "full",
                             "max_threads": 1}, AVIF_QUALITIES),
    # ... and the slow, full-chroma setting that shows what AV1 intra can do.
    "avif-444-s2": ("AVIF", {"subsampling": "4:4:4", "speed": 2, "codec": "aom", "range": "full",
                             "max_threads": 1}, AVIF_SLOW_QUALITIES),
}
CODEC_LIBRARY = {"JPEG": "libjpeg_turbo", "WEBP": "webp", "AVIF": "avif"}
COMPRESSAI_ARCHS = ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean")


def avif_available() -> bool:
    return bool(features.check("avif"))


def _pillow_encode(fmt: str, options: dict[str, Any], quality: int, x: Image.Image) -> bytes:
    buf = io.BytesIO()
    x.save(buf, format=fmt, quality=quality, **options)
    return buf.getvalue()


def decode_pillow(data: bytes) -> Image.Image:
    """Any Pillow-readable file -> fully decoded RGB image (decode time includes .load())."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def _pillow_point(fmt: str, options: dict[str, Any], quality: int) -> OperatingPoint:
    return OperatingPoint(f"q={quality}", partial(_pillow_encode, fmt, options, quality), decode_pillow)


def pillow_codec(name: str, qualities: Sequence[int] | None = None) -> CodecUnderTest:
    """A Pillow peer from PILLOW_PEERS at a sweep of qualities."""
    fmt, options, default_qualities = PILLOW_PEERS[name]
    qualities = tuple(qualities or default_qualities)
    library = CODEC_LIBRARY[fmt]
    settings = {"format": fmt, "pillow": Image.__version__, library: features.version(library),
                "qualities": list(qualities), **options}
    if fmt == "AVIF":
        from PIL import _avif  # which AV1 encoder/decoder libavif was built with

        settings["avif_codecs"] = _avif.codec_versions()
    described = ", ".join(f"{k}={v}" for k, v in options.items())
    return CodecUnderTest(
        name=name,
        description=f"{fmt} via Pillow {Image.__version__} ({library} {features.version(library)}), "
                    f"quality {list(qualities)}, {described}",
        points=tuple(_pillow_point(fmt, options, q) for q in qualities),
        settings=settings,
        make_point=partial(_pillow_point, fmt, options),
    )


# CompressAI container: image height, width, latent height, width, number of string groups,
# then one u32 length per group, then the strings. CompressAI's protocol counts the strings only.
_CAI_HEAD = struct.Struct("<HHHHB")


def pack_compressai(height: int, width: int, shape: Sequence[int], strings: Sequence[bytes]) -> bytes:
    lengths = struct.pack(f"<{len(strings)}I", *(len(s) for s in strings))
    return _CAI_HEAD.pack(height, width, shape[0], shape[1], len(strings)) + lengths + b"".join(strings)


def unpack_compressai(data: bytes) -> tuple[int, int, tuple[int, int], list[bytes]]:
    height, width, sh, sw, n = _CAI_HEAD.unpack_from(data)
    lengths = struct.unpack_from(f"<{n}I", data, _CAI_HEAD.size)
    pos, strings = _CAI_HEAD.size + 4 * n, []
    for length in lengths:
        strings.append(data[pos : pos + length])
        pos += length
    return height, width, (sh, sw), strings


def compressai_payload(data: bytes) -> int:
    return sum(len(s) for s in unpack_compressai(data)[3])


def _compressai_encode(model: Any, x: Image.Image) -> bytes:
    import numpy as np
    import torch
    import torch.nn.functional as F

    width, height = x.size
    t = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    pad_h, pad_w = (-height) % 64, (-width) % 64  # eval_model pads to the 2^6 stride
    t = F.pad(t, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    with torch.no_grad():
        out = model.compress(t)
    return pack_compressai(height, width, out["shape"], [group[0] for group in out["strings"]])


def _compressai_decode(model: Any, data: bytes) -> Image.Image:
    import torch

    height, width, shape, strings = unpack_compressai(data)
    with torch.no_grad():
        x_hat = model.decompress([[s] for s in strings], shape)["x_hat"].clamp(0, 1)
    pad_h, pad_w = x_hat.shape[2] - height, x_hat.shape[3] - width
    x_hat = x_hat[0, :, pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width]
    pixels = (x_hat * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels, "RGB")


def build_compressai(arch: str, quality: int) -> Any:
    """Untrained zoo architecture with the channel counts CompressAI uses at `quality`."""
    from compressai.zoo import image_models

    return image_models[arch](quality=quality, pretrained=False)


def load_compressai(path: Path) -> tuple[Any, dict]:
    """Trained model from `<arch>-q<n>.pth` and its training record `<arch>-q<n>.json`."""
    import torch

    record = json.loads(path.with_suffix(".json").read_text())
    model = build_compressai(record["arch"], record["quality"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.update(force=True)
    return model.eval(), record


def compressai_codec(arch: str, weights_dir: Path) -> CodecUnderTest:
    """CompressAI `arch` at every quality with weights in `weights_dir`."""
    import compressai

    paths = sorted(Path(weights_dir).glob(f"{arch}-q*.pth"), key=lambda p: int(p.stem.rsplit("q", 1)[1]))
    if not paths:
        raise FileNotFoundError(f"no {arch} weights in {weights_dir} (run benchmarks/train_compressai.py)")
    loaded = [load_compressai(p) for p in paths]
    steps = ", ".join(f"q{r['quality']} (lambda {r['lambda']}): {r['steps']}" for _, r in loaded)
    first = loaded[0][1]
    return CodecUnderTest(
        name=f"compressai-{arch}-short",
        description=f"CompressAI {compressai.__version__} {arch}, NOT the published weights: trained here from "
                    f"scratch on /work/shared/data/train, short CPU training, N steps per model = {steps} "
                    f"(batch {first['batch']}, {first['crop']}px crops, lr {first['lr']}, MSE loss); "
                    f"real compress() bitstreams, entropy coder {compressai.available_entropy_coders()[0]}",
        points=tuple(OperatingPoint(f"q{r['quality']}", partial(_compressai_encode, m),
                                    partial(_compressai_decode, m), compressai_payload) for m, r in loaded),
        settings={"arch": arch, "training": [{k: v for k, v in r.items() if k != "log"} for _, r in loaded]},
    )


def vqcodec_payload(data: bytes) -> int:
    """Entropy-coded bytes of a vqcodec file: the sum of its chunks, header excluded."""
    from vqcodec.bitstream import unpack

    _, chunks = unpack(data)
    return sum(len(chunk) for chunk in chunks)


def vqcodec_codec(order: str = "fast", models: Sequence[str] | None = None) -> CodecUnderTest:
    """vqcodec's bundled models (or `models`: bundled names or weights files) as one curve decoded in `order`."""
    from vqcodec.codec import Codec
    from vqcodec.models import list_models
    from vqcodec.bitstream import VERSION
    from vqcodec.rdo import DEFAULT_STEPS

    names = [n for n in (models or list_models()) if n != "default"]  # "default" would repeat a point
    if not names:
        raise FileNotFoundError("no bundled vqcodec models yet (vqcodec.models.list_models() is empty)")
    points, digests = [], {}
    for model in names:
        codec = Codec.load(model, device="cpu")
        digests[codec.name] = codec.digest.hex()  # says which weights a result belongs to; models get retrained
        points.append(OperatingPoint(codec.name, partial(codec.compress, order=order), codec.decompress,
                                     vqcodec_payload))
    names = [point.label for point in points]
    return CodecUnderTest(
        name=f"vqcodec-{order}",
        # The models are in settings, not here: a curve merged from runs of some models shares this text.
        description=f"vqcodec, one point per model (settings.models), decode order {order!r}, "
                    "default encoder effort, CPU",
        points=tuple(points),
        settings={"models": names, "order": order, "optimize_steps": DEFAULT_STEPS, "device": "cpu",
                  "weights_digest": digests, "format_version": VERSION},
    )


def _codecs_for(spec: str, weights_dir: Path | None,
                models: Sequence[str] | None = None) -> tuple[list[CodecUnderTest], list[str]]:
    """Codecs for one spec, plus notes about what was skipped."""
    if spec in ("avif", "avif-420-s6", "avif-444-s2") and not avif_available():
        return [], [f"{spec}: skipped, this Pillow ({Image.__version__}) was built without AVIF"]
    if spec == "avif":
        return [pillow_codec("avif-420-s6"), pillow_codec("avif-444-s2")], []
    if spec in PILLOW_PEERS:
        return [pillow_codec(spec)], []
    if spec == "pillow":
        codecs, notes = [], []
        for name in ("jpeg", "webp", "avif"):
            more, more_notes = _codecs_for(name, weights_dir)
            codecs, notes = codecs + more, notes + more_notes
        return codecs, notes
    if spec in ("vqcodec", "vqcodec-fast", "vqcodec-raster"):
        return [vqcodec_codec("raster" if spec.endswith("raster") else "fast", models)], []
    if spec == "compressai" or spec.startswith("compressai:"):
        if weights_dir is None:
            raise ValueError("CompressAI peers need a weights folder")
        archs = [spec.split(":", 1)[1]] if ":" in spec else COMPRESSAI_ARCHS
        found = [a for a in archs if any(Path(weights_dir).glob(f"{a}-q*.pth"))]
        notes = [f"compressai:{a}: skipped, no weights in {weights_dir}" for a in archs if a not in found]
        return [compressai_codec(a, weights_dir) for a in found], notes
    raise ValueError(f"unknown codec {spec!r}; known: pillow, jpeg, webp, avif, avif-420-s6, avif-444-s2, "
                     f"compressai[:ARCH], vqcodec, vqcodec-fast, vqcodec-raster")


def codecs_from_specs(specs: Sequence[str], *, weights_dir: Path | None = None,
                      models: Sequence[str] | None = None) -> tuple[list[CodecUnderTest], list[str]]:
    """Command-line codec names -> codecs under test, and notes on skipped ones.

    models: what the vqcodec curves run (bundled names or weights files); None: the bundled family.
    """
    codecs: list[CodecUnderTest] = []
    notes: list[str] = []
    for spec in specs:
        more, more_notes = _codecs_for(spec.strip().lower(), weights_dir, models)
        codecs += more
        notes += more_notes
    return codecs, notes
