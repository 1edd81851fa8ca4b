"""SymbolPrior: causality of both orders, decode schedules, stepper exactness, config, training signal."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
import torch

from vqcodec.context import IGNORED, group_order, head_nats
from vqcodec.prior import PriorConfig, SymbolPrior

CODEBOOKS = (16, 8)  # bottom, top
BOTTOM, TOP = (5, 7), (3, 4)  # odd sizes; bottom = 2 x top, cropped


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Maps of a few symbols gain nothing from threads, and a busy machine makes them wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prior() -> SymbolPrior:
    torch.manual_seed(0)
    config = PriorConfig(codebook_size=CODEBOOKS, upsample=(2,), channels=8, layers=3, fast_layers=3,
                         fast_groups=(2, 4))
    return SymbolPrior(config).eval()


def random_levels(seed: int = 0, batch: int = 1) -> list[torch.Tensor]:
    """Bottom (batch, 5, 7) and top (batch, 3, 4) int64 symbol maps."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, k, (batch, *size), generator=g) for k, size in zip(CODEBOOKS, (BOTTOM, TOP))]


def teacher_forced(prior: SymbolPrior, levels: list[torch.Tensor], order: str, level: int) -> torch.Tensor:
    """(K, h * w) logits of one level, batch element 0."""
    with torch.no_grad():
        return prior.logits(levels, order)[level][0].flatten(1)  # type: ignore[arg-type]


def with_symbol_changed(levels: list[torch.Tensor], level: int, positions: torch.Tensor) -> list[torch.Tensor]:
    """Copy of levels with the symbols at flat `positions` of `level` replaced by different ones."""
    changed = [s.clone() for s in levels]
    flat = changed[level].view(-1)
    flat[positions] = (flat[positions] + 1 + torch.arange(len(positions)) % 3) % CODEBOOKS[level]
    return changed


def stepper(prior: SymbolPrior, levels: list[torch.Tensor], order: str, level: int):
    context = levels[level + 1] if level + 1 < len(levels) else None
    return prior.stepper(order, level, *levels[level].shape[-2:], context)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [0, 1])
def test_raster_never_sees_the_current_or_later_symbols(prior, level):
    levels = random_levels(1)
    before = teacher_forced(prior, levels, "raster", level)
    width = levels[level].shape[2]
    for position in range(before.shape[1]):
        after = teacher_forced(prior, with_symbol_changed(levels, level, torch.tensor([position])), "raster", level)
        moved = (after != before).any(dim=0)  # (h * w,) bool
        assert not moved[: position + 1].any(), f"position {position} leaks into earlier logits"
        if (position + 1) % width:
            assert moved[position + 1], "the next position should see its left neighbour"


@pytest.mark.parametrize("level", [0, 1])
def test_fast_group_never_sees_its_own_or_later_groups(prior, level):
    levels = random_levels(2)
    net = prior.fast[level]
    height, width = levels[level].shape[-2:]
    groups = net.group_map(height, width)[:height, :width].flatten()
    before = teacher_forced(prior, levels, "fast", level)
    for g in range(net.side**2):
        later = torch.nonzero(groups >= g).flatten()
        after = teacher_forced(prior, with_symbol_changed(levels, level, later), "fast", level)
        moved = (after != before).any(dim=0)
        assert not moved[groups == g].any(), f"group {g} sees symbols of groups >= {g}"
        if 0 < g and (groups == g).any():
            earlier = torch.nonzero(groups < g).flatten()
            changed = teacher_forced(prior, with_symbol_changed(levels, level, earlier), "fast", level)
            assert (changed != before)[:, groups == g].any(), f"group {g} ignores the earlier groups"


@pytest.mark.parametrize("order", ["fast", "raster"])
@pytest.mark.parametrize("size", [(5, 7), (3, 4), (1, 1), (8, 8)])
def test_schedule_covers_every_position_once(prior, order, size):
    context = torch.zeros(1, (size[0] + 1) // 2, (size[1] + 1) // 2, dtype=torch.int64)
    steps = prior.stepper(order, 0, *size, context).schedule
    assert all(s.dtype == torch.int64 and s.dim() == 1 and len(s) for s in steps)
    assert sorted(torch.cat(steps).tolist()) == list(range(size[0] * size[1]))
    top_steps = prior.stepper(order, 1, *size, None).schedule
    assert sorted(torch.cat(top_steps).tolist()) == list(range(size[0] * size[1]))


@pytest.mark.parametrize("size", [(5, 7), (9, 30)])
def test_raster_schedule_decodes_one_wavefront_per_step(prior, size):
    """Step t holds every (r, c) with c + r * (margin + 1) = t, in row order; version 1 used one position per step."""
    h, w = size
    net = prior.raster[1]
    wave = net.margin + 1
    steps = prior.stepper("raster", 1, h, w, None).schedule
    assert len(steps) == (h - 1) * wave + w
    for t, positions in enumerate(steps):
        rows, cols = positions // w, positions % w
        assert (cols + rows * wave == t).all() and (rows.diff() > 0).all()
    assert max(len(s) for s in steps) > 1
    scan = prior.stepper("raster", 1, h, w, None, wavefront=False).schedule
    assert [s.tolist() for s in scan] == [[p] for p in range(h * w)]


def test_group_order_is_coarse_to_fine():
    assert group_order(2) == [(0, 0), (1, 1), (0, 1), (1, 0)]
    assert sorted(group_order(4)) == [(a, b) for a in range(4) for b in range(4)]
    assert group_order(4)[:4] == [(0, 0), (2, 2), (0, 2), (2, 0)]


@pytest.mark.parametrize("order", ["fast", "raster"])
@pytest.mark.parametrize("level", [0, 1])
def test_stepper_logits_equal_teacher_forced(prior, order, level):
    levels = random_levels(3)
    full = teacher_forced(prior, levels, order, level)
    steps = stepper(prior, levels, order, level)
    for step, positions in enumerate(steps.schedule):
        logits = steps.logits(step, levels[level])
        assert logits.shape == (len(positions), CODEBOOKS[level]) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, full[:, positions].t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["fast", "raster"])
@pytest.mark.parametrize("level", [0, 1])
def test_stepper_is_bit_identical_on_partial_maps(prior, order, level):
    """Encoder (full map) and decoder (undecoded places hold zeros or garbage) get the same bits."""
    levels = random_levels(4)
    steps = stepper(prior, levels, order, level)
    truth = levels[level]
    decoded = torch.zeros_like(truth)
    known = torch.zeros(truth.numel(), dtype=torch.bool)
    garbage = torch.Generator().manual_seed(5)
    for step, positions in enumerate(steps.schedule):
        noisy = torch.randint(0, CODEBOOKS[level], truth.shape, generator=garbage)
        noisy.view(-1)[known] = truth.view(-1)[known]
        encoder = steps.logits(step, truth)
        assert torch.equal(encoder, steps.logits(step, decoded))
        assert torch.equal(encoder, steps.logits(step, noisy))
        decoded.view(-1)[positions] = truth.view(-1)[positions]
        known[positions] = True


@pytest.mark.parametrize("order", ["fast", "raster"])
def test_bottom_logits_depend_on_the_top_level(prior, order):
    levels = random_levels(6)
    other_top = with_symbol_changed(levels, 1, torch.arange(TOP[0] * TOP[1]))
    assert not torch.allclose(teacher_forced(prior, levels, order, 0), teacher_forced(prior, other_top, order, 0))
    first = stepper(prior, levels, order, 0).logits(0, levels[0])
    assert not torch.allclose(first, stepper(prior, other_top, order, 0).logits(0, levels[0]))


def test_bits_and_loss_agree(prior):
    levels = random_levels(7, batch=2)
    with torch.no_grad():
        bits = prior.bits(levels, "fast")
        loss = prior.loss(levels, "fast")
    assert [b.shape for b in bits] == [(2,), (2,)]
    symbols = sum(s.numel() for s in levels)
    torch.testing.assert_close(sum(b.sum() for b in bits) * torch.log(torch.tensor(2.0)) / symbols, loss)


def reference_nats(prior: SymbolPrior, levels: list[torch.Tensor], order: str) -> list[torch.Tensor]:
    """Per level (B,) nats as first written: cross-entropy over whole-map logits, the fast order's
    assembled from its passes run as the input convolution (`pass_logits`, no tables)."""
    out = []
    for level, symbols in enumerate(levels):
        net = prior.networks(order)[level]  # type: ignore[arg-type]
        features = net.features(levels[level + 1] if level + 1 < len(levels) else None, *symbols.shape[-2:])
        if order == "raster":
            logits = net(symbols, features)
        else:
            hp, wp = net.padded_size(*symbols.shape[-2:])
            padded = torch.nn.functional.pad(symbols, (0, wp - symbols.shape[-1], 0, hp - symbols.shape[-2]))
            by_phase = [None] * len(net.order)
            for g, (a, b) in enumerate(net.order):
                visible = net.visibility(*symbols.shape[-2:], g)
                by_phase[a * net.side + b] = net.pass_logits(padded * (visible[:, 0] > 0), visible, features)
            stacked = torch.stack(by_phase, dim=2).flatten(1, 2)
            logits = torch.nn.functional.pixel_shuffle(stacked, net.side)[..., : symbols.shape[-2], : symbols.shape[-1]]
        out.append(torch.nn.functional.cross_entropy(logits, symbols, reduction="none").flatten(1).sum(1))
    return out


@pytest.mark.parametrize("order", ["fast", "raster"])
def test_bits_loss_and_gradients_match_the_whole_map_logits(prior, order):
    """bits/loss skip assembling the whole map's logits (the fast order scores each pass against its
    phase, padding ignored, and looks its input projection up in shared tables; both orders run the
    head channels-last, `head_nats`); they must give the numbers and gradients of cross-entropy over
    the whole-map logits."""
    levels = random_levels(9, batch=2)  # odd sizes: both levels' group grids are padded
    expected = reference_nats(prior, levels, order)
    for bits, nats in zip(prior.bits(levels, order), expected):  # type: ignore[arg-type]
        torch.testing.assert_close(bits * torch.log(torch.tensor(2.0)), nats)
    for logits, symbols, nats in zip(prior.logits(levels, order), levels, expected):  # type: ignore[arg-type]
        from_logits = torch.nn.functional.cross_entropy(logits, symbols, reduction="none").flatten(1).sum(1)
        torch.testing.assert_close(from_logits, nats)
    prior.zero_grad()
    (sum(n.sum() for n in expected) / sum(s.numel() for s in levels)).backward()
    reference_grads = [p.grad.clone() for p in prior.networks(order).parameters()]  # type: ignore[union-attr]
    prior.zero_grad()
    prior.loss(levels, order).backward()  # type: ignore[arg-type]
    grads = [p.grad for p in prior.networks(order).parameters()]  # type: ignore[union-attr]
    for mine, theirs in zip(grads, reference_grads):
        torch.testing.assert_close(mine, theirs)
    prior.zero_grad()


@pytest.mark.parametrize("autocast", [False, True])
def test_head_nats_is_cross_entropy_over_the_heads_logits(autocast):
    """Channels-last matrix products give the convolutions' numbers (bfloat16 autocast too, as in
    training); IGNORED targets cost nothing; a head that is not ReLUs and 1x1 convolutions runs as it is."""
    torch.manual_seed(3)
    head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 32, 1))
    x = torch.randn(2, 8, 5, 7)
    targets = torch.randint(0, 32, (2, 5, 7))
    targets[0, 4] = IGNORED
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = torch.nn.functional.cross_entropy(head(x), targets, ignore_index=IGNORED, reduction="none")
        nats = head_nats(head, x, targets)
    assert nats.shape == (2, 5, 7) and nats.dtype == torch.float32 and bool((nats[0, 4] == 0).all())
    torch.testing.assert_close(nats, expected, rtol=1e-2 if autocast else 1.3e-6, atol=1e-2 if autocast else 1e-5)
    assert bool((nats > 0).sum() == 2 * 5 * 7 - 7)
    wider = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(8, 32, 3, padding=1))  # not position by position
    torch.testing.assert_close(head_nats(wider, x, targets), torch.nn.functional.cross_entropy(
        wider(x), targets, ignore_index=IGNORED, reduction="none"))


@pytest.mark.parametrize("order", ["fast", "raster"])
def test_loss_decreases_on_a_repeated_batch(order):
    torch.manual_seed(1)
    model = SymbolPrior(PriorConfig(codebook_size=CODEBOOKS, upsample=(2,), channels=8, layers=2, fast_layers=3))
    levels = random_levels(8, batch=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(levels, order).item()  # type: ignore[arg-type]
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.loss(levels, order)  # type: ignore[arg-type]
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.8 * first


def test_config_round_trip_and_defaults():
    config = PriorConfig(codebook_size=(512, 256, 128), upsample=(2, 2))
    assert config.fast_groups == (2, 2, 4) and config.levels == 3
    assert config.fast_width == config.channels and PriorConfig((16, 8), (2,), fast_channels=96).fast_width == 96
    again = PriorConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and isinstance(again.upsample, tuple)
    with pytest.raises(ValueError, match="unknown"):
        PriorConfig.from_dict({**config.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError):
        PriorConfig(codebook_size=(16, 8), upsample=())
    with pytest.raises(ValueError):
        PriorConfig(codebook_size=(16, 8), upsample=(2,), fast_groups=(3, 4))
    with pytest.raises(ValueError, match="fast_channels"):
        PriorConfig(codebook_size=(16, 8), upsample=(2,), fast_channels=-1)


def test_bad_arguments_raise(prior):
    levels = random_levels(9)
    with pytest.raises(ValueError):
        prior.logits(levels, "exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        prior.stepper("fast", 0, *BOTTOM, None)
    with pytest.raises(ValueError):
        prior.logits([levels[0]], "fast")
