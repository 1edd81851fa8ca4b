from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vqcodec import bdrate, peers, rd
from vqcodec.cli.bench import bench_command
from vqcodec.cli.main import app

REFERENCE = Path(__file__).parents[1] / "benchmarks" / "reference"


def _result(name: str, bpp: list[float], psnr: list[float], ms_ssim: list[float] | None = None) -> dict:
    n = len(bpp)
    return {"name": name, "description": "", "results": {
        "bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb": ms_ssim or [0.9 + 0.01 * i for i in range(n)],
        "encoding_time": [0.0] * n, "decoding_time": [0.0] * n}}


CURVE = _result("a", [0.1, 0.25, 0.5, 1.0, 2.0], [26.0, 29.0, 32.0, 35.5, 39.0])


def test_bd_rate_of_curve_against_itself_is_zero():
    rate, psnr = bdrate.curve(CURVE)
    assert bdrate.bd_rate(rate, psnr, rate, psnr) == pytest.approx(0.0, abs=1e-9)
    assert bdrate.bd_psnr(rate, psnr, rate, psnr) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_half_rate_is_minus_fifty_percent():
    rate, psnr = bdrate.curve(CURVE)
    assert bdrate.bd_rate(rate, psnr, rate / 2, psnr) == pytest.approx(-50.0, abs=1e-9)
    assert bdrate.bd_rate(rate / 2, psnr, rate, psnr) == pytest.approx(100.0, abs=1e-9)


def test_bd_psnr_of_shifted_curve():
    rate, psnr = bdrate.curve(CURVE)
    assert bdrate.bd_psnr(rate, psnr, rate, psnr + 1.5) == pytest.approx(1.5)


def test_bd_without_overlap_is_nan():
    rate, psnr = bdrate.curve(CURVE)
    assert math.isnan(bdrate.bd_rate(rate, psnr, rate, psnr + 50))


def test_table_lists_every_codec():
    text = bdrate.table([CURVE, _result("b", [0.05, 0.125, 0.25, 0.5, 1.0], CURVE["results"]["psnr-rgb"])], "a")
    assert "| a | 5 |" in text and "+0.00 %" in text and "-50.00 %" in text


def test_anchor_is_interpolated_in_log_rate_and_refuses_to_extrapolate():
    # Halfway between 0.25 and 1.0 bpp in log-rate is 0.5 bpp; CURVE has 32 dB there.
    assert bdrate.anchor_psnr_at(CURVE, 0.5) == pytest.approx(32.0)
    assert bdrate.anchor_psnr_at(CURVE, math.sqrt(0.25 * 0.5)) == pytest.approx(30.5)
    assert bdrate.anchor_bpp_at(CURVE, 30.5) == pytest.approx(math.sqrt(0.25 * 0.5))
    assert bdrate.anchor_psnr_at(CURVE, 0.05) is None and bdrate.anchor_bpp_at(CURVE, 40.0) is None


def test_point_table_judges_every_point_against_the_anchor():
    test = _result("ours", [0.05, 0.25, 0.5], [24.0, 30.0, 31.0])
    test["points"] = ["m1", "m2", "m3"]
    rows = bdrate.point_rows(CURVE, test)
    assert rows[0] == "| ours | m1 | 0.0500 | 24.00 | outside | outside | outside the anchor's range |"
    assert rows[1].startswith("| ours | m2 | 0.2500 | 30.00 | +1.00 dB |") and rows[1].endswith("| better |")
    assert rows[2].startswith("| ours | m3 | 0.5000 | 31.00 | -1.00 dB |") and rows[2].endswith("| worse |")
    # Same PSNR as the anchor's 0.25-bpp point, at 0.5 bpp: twice the bits.
    assert "| +100.00 % |" in bdrate.point_rows(CURVE, _result("x", [0.5], [29.0]))[0]
    text = bdrate.report_markdown([CURVE, test], [], [], anchor="a", detail=["ours"])
    assert "Point by point against a" in text and "| ours | m3 |" in text


def test_reference_files_follow_the_schema():
    files = sorted(REFERENCE.glob("*.json"))
    assert files
    for path in files:
        data = rd.read_results(path)
        assert {"bpp", "psnr-rgb", "ms-ssim-rgb"} <= set(data["results"])


def test_schema_check_rejects_ragged_results():
    bad = _result("x", [0.1, 0.2], [30.0, 31.0])
    bad["results"]["psnr-rgb"] = [30.0]
    with pytest.raises(ValueError):
        rd.check_results(bad)


class FakeCodec:
    """Stands in for vqcodec: a 4-byte header, then zlib of the image quantized to `step`."""

    HEADER = b"FAKE"

    def __init__(self, step: int):
        self.step = step

    def compress(self, x: Image.Image) -> bytes:
        arr = (np.asarray(x) // self.step).astype(np.uint8)
        head = self.HEADER + bytes([self.step]) + x.size[0].to_bytes(2, "little") + x.size[1].to_bytes(2, "little")
        return head + zlib.compress(arr.tobytes())

    def decompress(self, data: bytes) -> Image.Image:
        step, w, h = data[4], int.from_bytes(data[5:7], "little"), int.from_bytes(data[7:9], "little")
        arr = np.frombuffer(zlib.decompress(data[9:]), np.uint8).reshape(h, w, 3)
        return Image.fromarray((arr.astype(np.uint16) * step + step // 2).clip(0, 255).astype(np.uint8))


def _fake_codec() -> rd.CodecUnderTest:
    points = tuple(rd.OperatingPoint(f"step={s}", FakeCodec(s).compress, FakeCodec(s).decompress,
                                     lambda data: len(data) - 9) for s in (64, 16))
    return rd.CodecUnderTest("fake", "fake codec for tests", points)


@pytest.fixture
def tiny_images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        yy, xx = np.mgrid[0:168, 0:176]
        base = np.stack([xx * 1.4, yy * 1.5, (xx + yy) * 0.7], axis=2) + rng.normal(0, 8, (168, 176, 3))
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_evaluate_fake_codec_averages_per_image(tiny_images: Path, tmp_path: Path):
    codec = _fake_codec()
    images = rd.list_images(tiny_images)
    rows = rd.evaluate(codec, images, progress=False)
    assert len(rows) == 4
    file_json = rd.summarize(codec, rows, "file")
    payload_json = rd.summarize(codec, rows, "payload")
    first = [m for m in rows if m.point == "step=64"]
    assert file_json["results"]["bpp"][0] == pytest.approx(np.mean([m.bpp for m in first]))
    assert file_json["results"]["psnr-rgb"][0] == pytest.approx(np.mean([m.psnr for m in first]))
    assert payload_json["results"]["bpp"][0] == pytest.approx(file_json["results"]["bpp"][0] - 72 / (168 * 176))
    # finer quantization: more bits and higher quality
    assert file_json["results"]["bpp"][1] > file_json["results"]["bpp"][0]
    assert file_json["results"]["psnr-rgb"][1] > file_json["results"]["psnr-rgb"][0]
    rd.check_results(file_json)


def test_pillow_peers_and_files(tiny_images: Path, tmp_path: Path):
    out = tmp_path / "out"
    codecs, notes = peers.codecs_from_specs(["jpeg", "webp"])
    codecs = [peers.pillow_codec(c.name, qualities=[20, 80]) for c in codecs] + [_fake_codec()]
    for codec in codecs:
        rd.save_codec_results(codec, rd.evaluate(codec, rd.list_images(tiny_images), progress=False), out)
    rd.report(out, anchor="jpeg", reference_dir=REFERENCE)
    data = json.loads((out / "jpeg.json").read_text())
    assert set(data) >= {"name", "description", "results"}
    assert set(data["results"]) == set(rd.RESULT_KEYS)
    assert "quality [20, 80]" in data["description"] and "subsampling=4:2:0" in data["description"]
    assert data["results"]["bpp"][0] < data["results"]["bpp"][1]
    assert (out / "compressai-protocol" / "fake.json").is_file()
    table = (out / "bd_rate.md").read_text()
    assert "| webp |" in table and "| fake |" in table and "bmshj2018-hyperprior-mse-8bit" in table
    assert {p.name for p in out.glob("rd-*")} == {"rd-psnr.png", "rd-psnr.svg", "rd-ms-ssim.png", "rd-ms-ssim.svg"}


@pytest.mark.parametrize("name", ["bench", "evaluate"])
def test_bench_command_end_to_end(tiny_images: Path, tmp_path: Path, name: str):
    """`vqcodec bench` measures and writes results; `vqcodec evaluate` is the same command."""
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [name, "--data", str(tiny_images), "--codec", "jpeg", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert rd.read_results(out / "jpeg.json")["results"]["bpp"]


def test_bench_command_unknown_codec_is_one_line(tiny_images: Path, tmp_path: Path):
    result = CliRunner().invoke(bench_command, ["--data", str(tiny_images), "--codec", "gif", "--out",
                                                str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "unknown codec 'gif'" in result.output and "Traceback" not in result.output


def test_avif_is_reported_or_skipped():
    codecs, notes = peers.codecs_from_specs(["avif"])
    if peers.avif_available():
        assert [c.name for c in codecs] == ["avif-420-s6", "avif-444-s2"]
        assert codecs[1].settings["subsampling"] == "4:4:4" and codecs[1].settings["speed"] == 2
    else:
        assert not codecs and "without AVIF" in notes[0]


def test_compressai_container_round_trip():
    data = peers.pack_compressai(512, 768, (32, 48), [b"abc", b"de"])
    assert peers.unpack_compressai(data) == (512, 768, (32, 48), [b"abc", b"de"])
    assert peers.compressai_payload(data) == 5


def test_visual_sheet_matches_rate(tiny_images: Path, tmp_path: Path):
    from vqcodec import plots

    image = rd.list_images(tiny_images)[0]
    panels = plots.comparison_sheet(image, [peers.pillow_codec("jpeg"), _fake_codec()], 2.0, tmp_path / "sheet",
                                    box=(8, 8, 64, 64))
    assert [p.codec for p in panels] == ["jpeg", "fake"]
    jpeg_q = {q: rd.measure(peers.pillow_codec("jpeg").make_point(q), rd.load_rgb(image), "x").bpp for q in (1, 100)}
    assert jpeg_q[1] <= panels[0].bpp <= jpeg_q[100]
    assert (tmp_path / "sheet.png").is_file()


def test_an_empty_curve_has_no_bd_rate_rather_than_an_error():
    rate, psnr = bdrate.curve(CURVE)
    empty = np.array([], float)
    assert math.isnan(bdrate.bd_rate(rate, psnr, empty, empty))
    assert math.isnan(bdrate.bd_psnr(empty, empty, rate, psnr))


def test_bench_on_images_too_small_for_ms_ssim_still_reports(tmp_path: Path):
    folder = tmp_path / "small"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / f"s{i}.png")
    result = CliRunner().invoke(bench_command, ["--data", str(folder), "--codec", "jpeg,webp", "--out",
                                                str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| webp |" in (tmp_path / "out" / "bd_rate.md").read_text()


def test_bench_names_an_unreadable_image_before_measuring(tiny_images: Path, tmp_path: Path):
    (tiny_images / "notes.png").write_text("not an image")
    (tiny_images / "folder.png").mkdir()  # a folder with an image's name is not an image
    result = CliRunner().invoke(bench_command, ["--data", str(tiny_images), "--codec", "jpeg", "--out",
                                                str(tmp_path / "out")])
    assert result.exit_code == 1 and "notes.png is not a readable image" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out" / "jpeg.json").exists()


def test_bench_runs_a_model_file_of_ones_own(tiny_images: Path, tmp_path: Path, tiny_model_path: Path):
    out = tmp_path / "own"
    result = CliRunner().invoke(bench_command, ["--data", str(tiny_images), "--codec", "vqcodec", "--model",
                                                str(tiny_model_path), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = rd.read_results(out / "vqcodec-fast.json")
    assert data["points"] == ["tiny"] and data["settings"]["models"] == ["tiny"]
    assert len(data["results"]["bpp"]) == 1 and data["results"]["bpp"][0] > 0
    result = CliRunner().invoke(bench_command, ["--data", str(tiny_images), "--codec", "vqcodec", "--model",
                                                "vqc-9", "--out", str(out)])
    assert result.exit_code == 1 and "unknown model 'vqc-9'" in result.output


def _curve(points: list[str], bpp: list[float], digests: dict[str, str], order: str = "fast") -> dict:
    data = _result("vqcodec-fast", bpp, [20.0 + 10 * b for b in bpp])
    return {**data, "protocol": "file: 24 images", "points": points,
            "settings": {"models": points, "order": order, "weights_digest": digests}}


def test_merging_results_replaces_the_re_run_points_and_keeps_the_others():
    base = _curve(["vqc-1", "vqc-2"], [0.1, 0.2], {"vqc-1": "aa", "vqc-2": "bb"})
    update = _curve(["vqc-2"], [0.18], {"vqc-2": "cc"})
    update["results"]["encoding_time"] = [7.5]
    merged = rd.merge_results(base, update)
    assert merged["points"] == ["vqc-1", "vqc-2"] and merged["results"]["bpp"] == [0.1, 0.18]
    assert merged["results"]["psnr-rgb"] == [21.0, 21.8] and merged["results"]["encoding_time"] == [0.0, 7.5]
    assert merged["settings"]["weights_digest"] == {"vqc-1": "aa", "vqc-2": "cc"}
    assert base["results"]["bpp"] == [0.1, 0.2]  # the inputs are left as they were


def test_merging_results_adds_a_new_point_at_the_end():
    merged = rd.merge_results(_curve(["vqc-1"], [0.1], {"vqc-1": "aa"}), _curve(["vqc-5"], [0.6], {"vqc-5": "ee"}))
    assert merged["points"] == ["vqc-1", "vqc-5"] and merged["settings"]["models"] == ["vqc-1", "vqc-5"]
    assert merged["results"]["bpp"] == [0.1, 0.6]


@pytest.mark.parametrize("change", ["order", "protocol", "name"])
def test_results_of_another_curve_are_not_merged(change: str):
    base = _curve(["vqc-1"], [0.1], {"vqc-1": "aa"})
    update = _curve(["vqc-1"], [0.1], {"vqc-1": "aa"}, order="raster" if change == "order" else "fast")
    if change != "order":
        update[change] = "other"
    with pytest.raises(ValueError, match=change):
        rd.merge_results(base, update)


def test_saving_with_merge_keeps_the_points_not_re_run_in_both_protocols(tiny_images: Path, tmp_path: Path):
    images = rd.list_images(tiny_images)
    first = peers.pillow_codec("jpeg", qualities=[20, 80])
    rd.save_codec_results(first, rd.evaluate(first, images, progress=False), tmp_path)
    before = rd.read_results(tmp_path / "jpeg.json")
    again = peers.pillow_codec("jpeg", qualities=[50])
    paths = rd.save_codec_results(again, rd.evaluate(again, images, progress=False), tmp_path, merge=True)
    assert paths == [tmp_path / "jpeg.json", tmp_path / "compressai-protocol" / "jpeg.json"]
    for path in paths:
        data = rd.read_results(path)
        assert data["points"] == before["points"] + ["q=50"] and len(data["results"]["bpp"]) == 3
    assert rd.read_results(paths[0])["results"]["bpp"][:2] == before["results"]["bpp"]
