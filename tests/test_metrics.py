from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from vqcodec import metrics


def test_psnr_matches_hand_computation():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16  # one error of 16 over 48 values: mse = 256 / 48
    expected = 10 * math.log10(255**2 / (256 / 48))
    assert metrics.mse(a, b) == pytest.approx(256 / 48)
    assert metrics.psnr(a, b) == pytest.approx(expected)
    assert metrics.psnr(a, b) == pytest.approx(40.8608, abs=1e-4)  # 10 log10(65025 * 48 / 256)


def test_psnr_of_constant_offset():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = np.full((8, 8, 3), 110, np.uint8)  # mse = 100 exactly
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(65025 / 100))


def test_psnr_identical_is_inf_and_symmetric():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a, b) == pytest.approx(metrics.psnr(b, a))


def test_psnr_accepts_pil_and_gray():
    arr = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert metrics.psnr(Image.fromarray(arr), arr) == math.inf
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert metrics.psnr(Image.fromarray(gray, "L"), np.repeat(gray[:, :, None], 3, axis=2)) == math.inf


def test_refuses_bad_inputs():
    with pytest.raises(TypeError):
        metrics.psnr(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))


def test_ms_ssim_identical_is_one_and_drops_with_noise():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (170, 180, 3), dtype=np.uint8)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ms_ssim(a, noisy) < 0.99


def test_ms_ssim_refuses_small_images():
    a = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="161"):
        metrics.ms_ssim(a, a)


def test_ms_ssim_db_and_bpp():
    assert metrics.ms_ssim_db(0.99) == pytest.approx(20.0)
    assert metrics.ms_ssim_db(1.0) == math.inf
    assert metrics.bpp(96, 16, 8) == 6.0  # 768 bits over 128 pixels
    with pytest.raises(ValueError):
        metrics.bpp(1, 0, 8)


def test_histogram_entropy_ignores_unused_codes():
    assert metrics.histogram_entropy(np.array([5, 5, 5, 5, 0, 0])) == pytest.approx(2.0)  # 4 codes used evenly
    assert metrics.histogram_entropy(np.array([0, 7, 0])) == 0.0
    three_to_one = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert metrics.histogram_entropy(np.array([3, 1])) == pytest.approx(three_to_one)
    with pytest.raises(ValueError):
        metrics.histogram_entropy(np.zeros(4, dtype=np.int64))
