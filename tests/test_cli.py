from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import photo_like
from vqcodec.cli.main import app


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_compress_decompress_info(tmp_path, image_file, tiny_model_path):
    vqc = tmp_path / "photo.vqc"
    result = run("compress", image_file, "-o", vqc, "--model", tiny_model_path)
    assert result.exit_code == 0, result.output
    assert "bpp" in result.output and vqc.stat().st_size > 0

    out = tmp_path / "back.png"
    result = run("decompress", vqc, "-o", out, "--model", tiny_model_path)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (53, 37)

    result = run("info", vqc)
    assert result.exit_code == 0 and "37" in result.output and "tiny" in result.output
    assert "format:   version 5 (exact prior)" in result.output and "order:    fast" in result.output


def test_the_optimize_default_is_the_encoders():
    """cli/coding.py writes rdo.DEFAULT_STEPS out so that --help need not import torch."""
    from vqcodec.cli.coding import DEFAULT_OPTIMIZE_STEPS
    from vqcodec.rdo import DEFAULT_STEPS

    assert DEFAULT_OPTIMIZE_STEPS == DEFAULT_STEPS
    assert re.search(rf"--optimize\b.*\[default: {DEFAULT_STEPS}[;\]]", run("compress", "--help").output, re.S)


@pytest.mark.parametrize("suffix, kind", [(".tiff", "TIFF"), (".bmp", "BMP"), (".ppm", "PPM"), (".webp", "WEBP"),
                                          (".PNG", "PNG"), ("", "PNG")])
def test_decompress_writes_the_lossless_format_its_output_names(tmp_path, image_file, tiny_model_path, suffix, kind):
    vqc = tmp_path / "photo.vqc"
    assert run("compress", image_file, "-o", vqc, "--model", tiny_model_path, "--optimize", "0").exit_code == 0
    assert run("decompress", vqc, "-o", tmp_path / "ref.png", "--model", tiny_model_path).exit_code == 0
    out = tmp_path / f"back{suffix}"
    result = run("decompress", vqc, "-o", out, "--model", tiny_model_path)
    assert result.exit_code == 0, result.output
    with Image.open(out) as written, Image.open(tmp_path / "ref.png") as reference:
        assert written.format == kind
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(reference))


@pytest.mark.parametrize("name", ["back.jpg", "back.avif", "back.xyz"])
def test_decompress_refuses_an_output_it_cannot_write_losslessly_before_decoding(tmp_path, image_file,
                                                                                 tiny_model_path, name):
    vqc = tmp_path / "photo.vqc"
    assert run("compress", image_file, "-o", vqc, "--model", tiny_model_path, "--optimize", "0").exit_code == 0
    result = run("decompress", vqc, "-o", tmp_path / name, "--model", tiny_model_path)
    assert result.exit_code == 2 and "losslessly" in result.output, result.output
    assert not (tmp_path / name).exists()


def test_info_says_which_arithmetic_an_older_file_needs():
    """Format 2 files were coded with the float32 prior: `info` says they decode only where it matches."""
    golden = Path(__file__).parent / "expected" / "header_v2.bin"
    result = run("info", str(golden))
    assert result.exit_code == 0, result.output
    assert "format:   version 2 (float32 prior: decodes where float32 sums match the writer's)" in result.output


def test_several_inputs_go_to_a_folder(tmp_path, tiny_model_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(photo_like(16, 24, seed=i)).save(paths[-1])
    result = run("compress", *paths, "-o", tmp_path / "out", "--model", tiny_model_path, "--mode", "raster")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.vqc", "im1.vqc", "im2.vqc"]


def test_refuses_to_overwrite_without_force(tmp_path, image_file, tiny_model_path):
    vqc = tmp_path / "photo.vqc"
    vqc.write_bytes(b"keep me")
    result = run("compress", image_file, "-o", vqc, "--model", tiny_model_path)
    assert result.exit_code != 0 and "--force" in result.output
    assert vqc.read_bytes() == b"keep me"
    assert run("compress", image_file, "-o", vqc, "--model", tiny_model_path, "--force").exit_code == 0
    assert vqc.read_bytes() != b"keep me"


def test_bad_inputs_exit_non_zero_with_one_line(tmp_path, tiny_model_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    corrupt = tmp_path / "corrupt.vqc"
    corrupt.write_bytes(b"VQC\x01" + bytes(40))
    cases = [
        ("compress", tmp_path / "missing.png", "--model", tiny_model_path),
        ("compress", not_image, "--model", tiny_model_path),
        ("compress", not_image, "--model", tmp_path / "nope.safetensors"),
        ("decompress", tmp_path / "missing.vqc"),
        ("decompress", corrupt),
        ("decompress", not_image),
        ("info", corrupt),
    ]
    for args in cases:
        result = run(*args)
        assert result.exit_code != 0, args
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "notes.vqc").exists()


def test_truncated_file_leaves_no_output(tmp_path, image_file, tiny_model_path):
    vqc = tmp_path / "photo.vqc"
    assert run("compress", image_file, "-o", vqc, "--model", tiny_model_path).exit_code == 0
    vqc.write_bytes(vqc.read_bytes()[:-5])
    out = tmp_path / "back.png"
    result = run("decompress", vqc, "-o", out, "--model", tiny_model_path)
    assert result.exit_code == 1 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_grayscale_and_16_bit(tmp_path, tiny_model_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(photo_like(20, 20)).convert("L").save(gray)
    assert run("compress", gray, "--model", tiny_model_path).exit_code == 0
    assert run("decompress", tmp_path / "gray.vqc", "-o", tmp_path / "g.png", "--model", tiny_model_path).exit_code == 0
    assert Image.open(tmp_path / "g.png").mode == "L"
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(deep)
    result = run("compress", deep, "--model", tiny_model_path)
    assert result.exit_code == 1 and "16-bit" in result.output


def test_console_script_and_module_entry_points():
    for cmd in (["vqcodec", "--help"], [sys.executable, "-m", "vqcodec.cli", "--help"]):
        exe = Path(sys.executable).parent / cmd[0] if cmd[0] == "vqcodec" else None
        argv = [str(exe)] + cmd[1:] if exe else cmd
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        for command in ("compress", "decompress", "info", "models"):
            assert command in proc.stdout


def test_subprocess_error_is_one_line(tmp_path):
    exe = Path(sys.executable).parent / "vqcodec"
    proc = subprocess.run([str(exe), "decompress", str(tmp_path / "missing.vqc")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_a_library_warning_is_one_line_not_its_source(tmp_path, tiny_model_path):
    path = tmp_path / "damaged-exif.png"
    Image.fromarray(photo_like(16, 16)).save(path, exif=b"MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03")
    proc = subprocess.run([sys.executable, "-m", "vqcodec.cli", "compress", str(path), "-o", str(tmp_path / "x.vqc"),
                           "-m", str(tiny_model_path), "--optimize", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning: Corrupt EXIF data" in proc.stderr and "warnings.warn" not in proc.stderr, proc.stderr


def test_target_bpp_picks_a_bundled_model(tmp_path, image_file):
    from vqcodec.models import list_models

    names = list_models()
    assert len(names) >= 4, "the bundled model family is missing"
    low = run("compress", image_file, "-o", tmp_path / "low.vqc", "--target-bpp", "0.0001")
    assert low.exit_code == 0, low.output
    assert "bpp" in low.output  # nothing meets the target: the smallest file
    high = run("compress", image_file, "-o", tmp_path / "high.vqc", "--target-bpp", "100")
    assert high.exit_code == 0, high.output
    assert (tmp_path / "high.vqc").stat().st_size >= (tmp_path / "low.vqc").stat().st_size
    assert run("decompress", tmp_path / "high.vqc", "-o", tmp_path / "high.png").exit_code == 0


def test_models_lists_the_family():
    result = run("models")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == ["vqc-1", "vqc-2", "vqc-3", "vqc-4", "vqc-5", "vqc-6"]
    assert all(line.count(line.split()[0]) == 1 for line in result.output.splitlines()), result.output
    assert all(re.search(r"Kodak \d\.\d{3} bpp, \d\d\.\d\d dB$", line) for line in result.output.splitlines())


def test_a_model_file_whose_name_a_header_cannot_hold_is_refused_before_encoding(tmp_path, image_file,
                                                                                 tiny_model_path):
    odd = tmp_path / "my model for portraits, second try.safetensors"  # 36 characters: too long
    odd.write_bytes(tiny_model_path.read_bytes())
    result = run("compress", image_file, "-o", tmp_path / "x.vqc", "--model", odd)
    assert result.exit_code == 1 and "rename it" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.vqc").exists()


def test_batch_decompress_reports_a_file_from_an_unbundled_model_and_goes_on(tmp_path, image_file,
                                                                             tiny_model_path):
    assert run("compress", image_file, "-o", tmp_path / "a.vqc", "--model", tiny_model_path).exit_code == 0
    assert run("compress", image_file, "-o", tmp_path / "b.vqc", "-m", "vqc-1", "--optimize", "0").exit_code == 0
    result = run("decompress", tmp_path / "a.vqc", tmp_path / "b.vqc", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "a.vqc: file was made by model 'tiny', which is not bundled" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.png"]


def test_a_header_cannot_point_at_a_weights_file_on_disk(tmp_path, image_file, tiny_model_path, monkeypatch):
    named = tmp_path / "x.safetensors.safetensors"  # model name "x.safetensors", which looks like a path
    named.write_bytes(tiny_model_path.read_bytes())
    assert run("compress", image_file, "-o", tmp_path / "a.vqc", "--model", named).exit_code == 0
    (tmp_path / "x.safetensors").write_bytes(tiny_model_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    result = run("decompress", tmp_path / "a.vqc", "-o", tmp_path / "a.png")
    assert result.exit_code == 1 and "not bundled" in result.output and not (tmp_path / "a.png").exists()
    assert run("decompress", tmp_path / "a.vqc", "-o", tmp_path / "a.png", "--model", named).exit_code == 0


def test_inputs_that_would_share_an_output_are_refused_before_any_work(tmp_path, tiny_model_path):
    Image.fromarray(photo_like(16, 16)).save(tmp_path / "a.png")
    Image.fromarray(photo_like(16, 16)).save(tmp_path / "a.bmp")
    for extra in ((), ("-o", tmp_path / "out"), ("--force",)):
        result = run("compress", tmp_path / "a.png", tmp_path / "a.bmp", "--model", tiny_model_path, *extra)
        assert result.exit_code == 2 and "would both be written to" in result.output, result.output
        assert not list(tmp_path.rglob("*.vqc"))


def test_an_output_ending_in_a_slash_is_a_folder(tmp_path, image_file, tiny_model_path):
    result = run("compress", image_file, "-o", f"{tmp_path / 'new'}/", "--model", tiny_model_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "photo.vqc").is_file()


def test_output_to_a_non_file_is_written_in_place(tmp_path, image_file, tiny_model_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = run("compress", image_file, "-o", pipe, "--model", tiny_model_path)  # no --force needed
        assert result.exit_code == 0, result.output
        assert os.read(fd, 1 << 16)[:3] == b"VQC"
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(pipe.stat().st_mode)


def test_target_bpp_must_be_a_positive_number_and_excludes_model(image_file, tmp_path):
    for bad in ("0", "-1", "nan", "inf"):
        result = run("compress", image_file, "-o", tmp_path / "x.vqc", "--target-bpp", bad)
        assert result.exit_code == 2 and "--target-bpp" in result.output, (bad, result.output)
    result = run("compress", image_file, "-o", tmp_path / "x.vqc", "--target-bpp", "0.5", "-m", "vqc-1")
    assert result.exit_code == 2 and "not both" in result.output
    assert not (tmp_path / "x.vqc").exists()


def test_slope_picks_a_bundled_model_and_is_checked_like_a_target(image_file, tmp_path):
    from vqcodec import bitstream

    cheap = run("compress", image_file, "-o", tmp_path / "cheap.vqc", "--slope", "1000")
    dear = run("compress", image_file, "-o", tmp_path / "dear.vqc", "--slope", "0.001")
    assert cheap.exit_code == 0 and dear.exit_code == 0, cheap.output + dear.output
    names = [bitstream.read_header((tmp_path / f).read_bytes()).model_name for f in ("cheap.vqc", "dear.vqc")]
    assert names[0] in cheap.output and names[1] in dear.output and names[0] != names[1]
    assert (tmp_path / "dear.vqc").stat().st_size > (tmp_path / "cheap.vqc").stat().st_size
    for bad in ("0", "-1", "nan", "inf"):
        result = run("compress", image_file, "-o", tmp_path / "x.vqc", "--slope", bad)
        assert result.exit_code == 2 and "--slope" in result.output, (bad, result.output)
    for extra in (["-m", "vqc-1"], ["--target-bpp", "0.5"]):
        result = run("compress", image_file, "-o", tmp_path / "x.vqc", "--slope", "8", *extra)
        assert result.exit_code == 2 and "--slope" in result.output, result.output
    assert not (tmp_path / "x.vqc").exists()


def test_a_folder_given_as_a_vqc_file_is_named_as_such(tmp_path):
    for command in ("info", "decompress"):
        result = run(command, tmp_path)
        assert result.exit_code == 1 and "is a folder" in result.output, result.output


def test_standard_input_and_output_for_pipelines(tmp_path, image_file, tiny_model_path):
    from vqcodec.codec import Codec

    image = image_file.read_bytes()
    compressed = CliRunner().invoke(app, ["compress", "-", "-o", "-", "--model", str(tiny_model_path)], input=image)
    assert compressed.exit_code == 0, compressed.output
    data = compressed.stdout_bytes  # the file alone: the status line went to stderr
    assert data.startswith(b"VQC") and "<stdin> -> <stdout>" in compressed.stderr
    assert data == Codec.load(tiny_model_path).compress(Image.open(image_file))
    decompressed = CliRunner().invoke(app, ["decompress", "-", "--model", str(tiny_model_path)], input=data)
    assert decompressed.exit_code == 0, decompressed.output
    (tmp_path / "out.png").write_bytes(decompressed.stdout_bytes)
    assert Image.open(tmp_path / "out.png").size == Image.open(image_file).size
    info = CliRunner().invoke(app, ["info", "-"], input=data)
    assert info.exit_code == 0 and "file:     <stdin>" in info.output


def test_standard_streams_are_refused_where_they_cannot_work(tmp_path, image_file, tiny_model_path):
    for args, where in ((["compress", "-", str(image_file), "-o", str(tmp_path)], "only input"),
                        (["compress", str(image_file), str(image_file), "-o", "-"], "takes one input"),
                        (["compress", "-", "-o", str(tmp_path) + "/"], "give -o a file name")):
        result = CliRunner().invoke(app, args, input=b"")
        assert result.exit_code == 2 and where in result.output, (args, result.output)
    bad = CliRunner().invoke(app, ["decompress", "-", "-o", str(tmp_path / "x.png")], input=b"garbage")
    assert bad.exit_code == 1 and "error: <stdin>: not a vqcodec file" in bad.stderr
    assert not (tmp_path / "x.png").exists() and "Traceback" not in bad.output


def test_models_shows_a_card_by_name():
    result = run("models", "vqc-4")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# vqc-4") and "## Training" in result.output and "bpp:" in result.output
    assert run("models", "default").output.startswith("# vqc-3 (default)")
    unknown = run("models", "vqc-9")
    assert unknown.exit_code == 1 and "unknown model 'vqc-9'" in unknown.output and "vqc-1" in unknown.output


def test_no_adapt_writes_no_decoder_correction(tmp_path, tiny_model_path):
    """An untrained decoder gains a lot from the correction, so a 96x128 image carries one by
    default; --no-adapt leaves it out, `info` shows which, and both files decompress."""
    source = tmp_path / "photo.png"
    Image.fromarray(photo_like(96, 128, seed=3)).save(source)
    for flag, expected in ((), "adapted:  25 bytes, scale per channel"), (("--no-adapt",), "adapted:  none"):
        vqc = tmp_path / f"photo{len(flag)}.vqc"
        assert run("compress", source, "-o", vqc, "--model", tiny_model_path, *flag).exit_code == 0
        info = run("info", vqc)
        assert info.exit_code == 0 and expected in info.output, info.output
        result = run("decompress", vqc, "-o", tmp_path / f"back{len(flag)}.png", "--model", tiny_model_path)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "photo0.vqc").stat().st_size > (tmp_path / "photo1.vqc").stat().st_size


def test_no_output_replaces_its_own_input_even_with_force(tmp_path, image_file, tiny_model_path):
    original = image_file.read_bytes()
    link = tmp_path / "link.vqc"
    link.symlink_to(image_file)
    for args in [("compress", image_file, "-o", image_file, "--force"),  # a photo written over by its .vqc
                 ("compress", image_file, "-o", link, "--force"),  # the same file under another name
                 ("decompress", image_file, "--force")]:  # photo.png's default output is photo.png
        result = run(*args, "--model", tiny_model_path)
        assert result.exit_code == 1, args
        assert result.output.strip() == f"error: {image_file}: the output would be written over the input itself; " \
                                        "give -o another name", result.output
        assert image_file.read_bytes() == original


def test_a_vqc_file_given_to_compress_is_named_as_one(tmp_path, image_file, tiny_model_path):
    vqc = tmp_path / "photo.vqc"
    assert run("compress", image_file, "-o", vqc, "--model", tiny_model_path).exit_code == 0
    message = "a .vqc file, not an image: `vqcodec decompress` turns it back into one"
    result = run("compress", vqc, "-o", tmp_path / "again.vqc", "--model", tiny_model_path)
    assert result.exit_code == 1 and result.output.strip() == f"error: {vqc}: {message}"
    piped = CliRunner().invoke(app, ["compress", "-", "-o", str(tmp_path / "piped.vqc"), "--model",
                                     str(tiny_model_path)], input=vqc.read_bytes())
    assert piped.exit_code == 1 and message in piped.output
    assert not (tmp_path / "again.vqc").exists() and not (tmp_path / "piped.vqc").exists()


def test_a_cut_out_keeps_its_alpha_through_the_command_line(tmp_path, tiny_model_path):
    rgba = np.dstack([photo_like(24, 32), np.zeros((24, 32), dtype=np.uint8)])
    rgba[4:20, 6:26, 3] = 255
    rgba[4:20, 6, 3] = 128  # a soft edge
    src = tmp_path / "logo.png"
    Image.fromarray(rgba).save(src)
    assert run("compress", src, "--model", tiny_model_path).exit_code == 0
    info = run("info", tmp_path / "logo.vqc")
    assert "format:   version 6" in info.output and "image:    32x24 RGBA" in info.output
    assert re.search(r"alpha:    \d+ bytes \(WebP lossless, exact\)", info.output), info.output
    for suffix in (".png", ".webp", ".tiff"):
        out = tmp_path / f"back{suffix}"
        assert run("decompress", tmp_path / "logo.vqc", "-o", out, "--model", tiny_model_path).exit_code == 0
        back = Image.open(out)
        assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[..., 3], rgba[..., 3]), suffix
    for suffix, kind in ((".bmp", "BMP"), (".ppm", "PPM")):  # Pillow would write them without the alpha
        result = run("decompress", tmp_path / "logo.vqc", "-o", tmp_path / f"flat{suffix}", "--model", tiny_model_path)
        assert result.exit_code == 1 and f"transparency, which {kind} cannot hold" in result.output
        assert not (tmp_path / f"flat{suffix}").exists()
