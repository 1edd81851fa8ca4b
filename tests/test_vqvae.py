"""VQVAE2: shapes per level, odd sizes, encode/decode consistency, config and state round trips."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from vqcodec.vqvae import VQVAE2, VQVAE2Config

DOWNSAMPLE = {1: (4,), 2: (4, 2), 3: (2, 2, 2)}
H, W = 37, 53


def tiny_config(levels: int, **changes: object) -> VQVAE2Config:
    cfg = VQVAE2Config(channels=8, res_blocks=1, res_channels=4, downsample=DOWNSAMPLE[levels],
                       codebook_size=(16, 8, 4)[:levels], code_dim=(4, 3, 2)[:levels])
    return VQVAE2Config.from_dict({**cfg.to_dict(), **changes})


def trained_model(levels: int, **changes: object) -> tuple[VQVAE2, torch.Tensor]:
    """A tiny model after one training-mode forward (codebooks seeded from data), in eval mode."""
    torch.manual_seed(levels)
    model = VQVAE2(tiny_config(levels, **changes))
    x = torch.rand(2, 3, H, W)
    model(x)
    return model.eval(), x


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_forward_keeps_odd_sizes_and_matches_latent_sizes(levels: int) -> None:
    model, x = trained_model(levels)
    out = model(x)
    assert out.x_hat.shape == x.shape and out.x_hat.dtype == torch.float32
    assert out.vq_loss.shape == () and torch.isfinite(out.vq_loss)
    sizes = model.latent_sizes(H, W)
    assert [tuple(s.shape[1:]) for s in out.symbols] == sizes
    assert [tuple(s.shape[1:]) for s in model.encode(x)] == sizes
    assert all(s.dtype == torch.int64 for s in out.symbols)
    m = model.multiple
    assert sizes[0] == (-(-H // m) * m // DOWNSAMPLE[levels][0], -(-W // m) * m // DOWNSAMPLE[levels][0])


def test_latent_sizes_hand_values() -> None:
    model = VQVAE2(tiny_config(2))
    assert model.multiple == 8
    assert model.latent_sizes(37, 53) == [(10, 14), (5, 7)]  # padded to 40 x 56
    assert model.latent_sizes(8, 16) == [(2, 4), (1, 2)]


@pytest.mark.parametrize("levels, ema", [(1, True), (2, False), (3, True)])
def test_decode_of_encode_equals_forward_in_eval(levels: int, ema: bool) -> None:
    model, x = trained_model(levels, ema=ema)
    with torch.no_grad():
        out = model(x)
    symbols = model.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(symbols, out.symbols))
    assert symbols[0].unique().numel() > 1  # seeded codebook: a non-trivial case
    x_hat = model.decode(symbols, size=(H, W))
    assert torch.allclose(x_hat, out.x_hat, atol=1e-6)
    assert model.decode(symbols).shape[2:] == (40, 56)  # no size: the padded grid


def test_encode_changes_no_state_even_in_training_mode() -> None:
    model = VQVAE2(tiny_config(2, dead_after=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(torch.rand(1, 3, 16, 24))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_step_gives_encoder_and_decoder_gradients() -> None:
    torch.manual_seed(0)
    model = VQVAE2(tiny_config(2, ema=False))
    x = torch.rand(1, 3, 16, 24)
    out = model(x)
    ((out.x_hat - x).pow(2).mean() + out.vq_loss).backward()
    for part in (model.encoders[0], model.encoders[1], model.decoder, model.cond_decoders[0]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.quantizers[1].codebook.grad is not None


def test_config_round_trip_through_json() -> None:
    cfg = tiny_config(3, ema=False, decay=0.9)
    back = VQVAE2Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.downsample, tuple)
    assert back.levels == 3


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown"):
        VQVAE2Config.from_dict({**VQVAE2Config().to_dict(), "activation": "gelu"})
    with pytest.raises(ValueError):
        VQVAE2Config(downsample=(4, 2), codebook_size=(512,), code_dim=(64, 64))
    with pytest.raises(ValueError):
        VQVAE2Config(downsample=(3, 2))


def test_state_dict_save_load_gives_identical_outputs() -> None:
    model, x = trained_model(2)
    data = safetensors.torch.save(model.state_dict())  # no shared or non-contiguous tensors
    fresh = VQVAE2(model.config)
    fresh.load_state_dict(safetensors.torch.load(data))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x).x_hat, model(x).x_hat)
    assert all(torch.equal(a, b) for a, b in zip(fresh.encode(x), model.encode(x)))


def test_decode_rejects_wrong_number_of_levels() -> None:
    model = VQVAE2(tiny_config(2))
    with pytest.raises(ValueError):
        model.decode([torch.zeros(1, 2, 2, dtype=torch.int64)])


@pytest.mark.parametrize("downsample, extra", [((4, 2), {}), ((8, 2, 2), {"refine_blocks": 2, "tail_blocks": 1})])
def test_tiled_decode_matches_the_whole_image(downsample, extra) -> None:
    """Tiles of a large image, each decoded with its halo, give the whole-image decode back."""
    torch.manual_seed(0)
    levels = len(downsample)
    model = VQVAE2(VQVAE2Config(channels=16, res_blocks=1, res_channels=8, downsample=downsample,
                                codebook_size=(16,) * levels, code_dim=(4,) * levels, **extra)).eval()
    for module in model.modules():  # identity-initialised blocks would make the halo trivially enough
        if isinstance(module, torch.nn.Conv2d) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.3)
    height, width = model.multiple * 9, model.multiple * 7  # a ragged last tile in both directions
    symbols = [torch.randint(0, 16, (1, h, w)) for h, w in model.latent_sizes(height, width)]
    tile = 2 * model.multiple  # pixels: a few bottom cells per tile, many tiles
    with torch.no_grad():
        whole = model.decode(symbols, (height - 3, width - 5))
        tiled = model.decode(symbols, (height - 3, width - 5), tile_pixels=tile)
        assert tiled.shape == whole.shape
        assert (tiled - whole).abs().max() < 1e-5
        # Without the halo the tile borders show: the comparison above can fail.
        halo = model.decode_halo
        model.decode_halo = lambda: 0  # type: ignore[method-assign]
        assert (model.decode(symbols, (height - 3, width - 5), tile_pixels=tile) - whole).abs().max() > 1e-3
        model.decode_halo = halo  # type: ignore[method-assign]


@pytest.mark.parametrize("downsample", [(4, 2), (8, 2, 2)])
def test_tiled_encode_matches_the_whole_image(downsample) -> None:
    """Tiles of a large image, each encoded with its halo, give the whole-image latents back."""
    torch.manual_seed(1)
    levels = len(downsample)
    model = VQVAE2(VQVAE2Config(channels=16, res_blocks=1, res_channels=8, downsample=downsample,
                                codebook_size=(16,) * levels, code_dim=(4,) * levels))
    height, width = model.multiple * 9 - 3, model.multiple * 7 - 5  # padded, ragged last tiles
    x = torch.rand(1, 3, height, width)
    model(x)  # seeds the codebooks from this image's vectors, so codes vary across it
    model.eval()
    tile = 2 * model.multiple  # pixels: many tiles
    whole_vectors, whole_symbols = model.latent_vectors(x, tile_pixels=10**6)
    vectors, symbols = model.latent_vectors(x, tile_pixels=tile)
    for a, b in zip(vectors, whole_vectors):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-4
    assert all(torch.equal(a, b) for a, b in zip(symbols, whole_symbols))
    assert len(set(whole_symbols[0].flatten().tolist())) > 2
    # Without the halo the tile borders show: the comparison above can fail.
    halo = model.encode_halo
    model.encode_halo = lambda: 0  # type: ignore[method-assign]
    vectors, _ = model.latent_vectors(x, tile_pixels=tile)
    assert max((a - b).abs().max() for a, b in zip(vectors, whole_vectors)) > 1e-3
    model.encode_halo = halo  # type: ignore[method-assign]
