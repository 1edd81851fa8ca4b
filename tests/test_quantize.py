"""VectorQuantizer: nearest codes, losses, straight-through, EMA, codebook health, DDP agreement."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqcodec.quantize import VectorQuantizer


def as_map(vectors: list[list[float]]) -> torch.Tensor:
    """N vectors of length D -> (1, D, 1, N) feature map."""
    return torch.tensor(vectors, dtype=torch.float32).t().reshape(1, len(vectors[0]), 1, len(vectors))


def rows(z: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B*h*w, D)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def quantizer(codebook: list[list[float]], **options: object) -> VectorQuantizer:
    """A quantizer with a fixed codebook (no data init)."""
    options.setdefault("data_init", False)
    vq = VectorQuantizer(len(codebook[0]), len(codebook), **options)  # type: ignore[arg-type]
    vq.set_codebook(torch.tensor(codebook))
    return vq


def is_row_of(vector: torch.Tensor, table: torch.Tensor) -> bool:
    return bool(torch.isclose(table, vector).all(1).any())


CODEBOOK = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]


def test_nearest_matches_hand_computation() -> None:
    vq = quantizer(CODEBOOK)
    z = as_map([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [0.6, 0.0], [0.4, 0.0]])
    # [0.6, 0]: 0.36 to code 0, 0.16 to code 1; [0.4, 0]: 0.16 vs 0.36.
    assert vq.nearest(z).tolist() == [[[0, 1, 2, 1, 0]]]
    assert vq.nearest(z).dtype == torch.int64


def test_nearest_uses_float32_under_autocast() -> None:
    # 1.0 and 1.004 are the same number in bfloat16; only float32 distances separate them.
    vq = quantizer([[1.0, 0.0], [1.004, 0.0]])
    z = as_map([[1.003, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert vq.nearest(z).item() == 1
        assert vq(z).symbols.item() == 1


def test_lookup_inverts_nearest_on_codebook_vectors() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 16, data_init=False)
    symbols = torch.randint(0, 16, (2, 3, 5))
    vectors = vq.lookup(symbols)
    assert vectors.shape == (2, 4, 3, 5)
    assert torch.equal(vq.nearest(vectors), symbols)


def test_straight_through_gives_encoder_gradients() -> None:
    vq = quantizer(CODEBOOK)
    z = as_map([[0.1, 0.1], [0.9, -0.2]]).requires_grad_()
    codes = vq.codebook.clone()  # the training step updates the codebook after quantizing
    out = vq(z)
    assert torch.equal(out.quantized, codes[[0, 1]].t().reshape(1, 2, 1, 2))  # exactly the codes
    (out.quantized * torch.arange(1.0, 3.0).view(1, 1, 1, 2)).sum().backward()
    assert torch.equal(z.grad, torch.tensor([[[[1.0, 2.0]], [[1.0, 2.0]]]]))  # identity gradient


@pytest.mark.parametrize("ema, factor", [(True, 0.25), (False, 1.25)])
def test_loss_on_hand_example(ema: bool, factor: float) -> None:
    vq = quantizer([[0.0, 0.0], [1.0, 0.0]], ema=ema).eval()
    z = as_map([[0.2, 0.1]])
    out = vq(z)
    mse = (0.2**2 + 0.1**2) / 2  # against code 0, mean over D
    assert out.loss.item() == pytest.approx(factor * mse, rel=1e-5)
    if not ema:  # the codebook loss pulls code 0 toward z: d/de mean((e - z)^2) = (e - z)
        out.loss.backward()
        assert torch.allclose(vq.codebook.grad[0], torch.tensor([-0.2, -0.1]))
        assert torch.equal(vq.codebook.grad[1], torch.zeros(2))


def test_ema_update_moves_codes_toward_assigned_vectors() -> None:
    vq = quantizer([[0.0, 0.0], [5.0, 5.0]], decay=0.9, epsilon=0.0, dead_after=0)
    z = as_map([[1.0, 1.0], [1.0, 3.0], [0.0, 0.5]])  # all assigned to code 0, mean (2/3, 1.5)
    vq(z)
    # cluster 0: 0.9 * 1 + 0.1 * 3 = 1.2; sum 0: 0.9 * (0, 0) + 0.1 * (2, 4.5); code 1 keeps 0.9 / 0.9.
    assert torch.allclose(vq.codebook, torch.tensor([[0.2 / 1.2, 0.45 / 1.2], [5.0, 5.0]]))
    before = torch.tensor([2 / 3, 1.5]).norm()
    vq(z)
    assert (vq.codebook[0] - torch.tensor([2 / 3, 1.5])).norm() < 0.7 * before


def test_eval_mode_and_nearest_change_nothing() -> None:
    vq = VectorQuantizer(2, 4, dead_after=1)
    z = torch.randn(2, 2, 3, 3)
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.nearest(z)  # training mode, but nearest is pure
    vq.eval()(z)
    assert all(torch.equal(state[k], v) for k, v in vq.state_dict().items())
    assert not bool(vq.initialized)


def test_data_init_takes_codes_from_first_batch() -> None:
    torch.manual_seed(1)
    vq = VectorQuantizer(3, 4, ema=False)  # no EMA step moving the codes after seeding
    first = torch.randn(1, 3, 2, 5)
    vq(first)
    assert all(is_row_of(code, rows(first)) for code in vq.codebook)
    assert len({tuple(code.tolist()) for code in vq.codebook}) == 4  # distinct vectors
    frozen = vq.codebook.clone()
    vq.eval()(torch.randn(1, 3, 2, 5) + 10)  # later batches do not re-seed
    assert torch.equal(vq.codebook, frozen)


def test_data_init_with_fewer_vectors_than_codes_keeps_codes_distinct() -> None:
    torch.manual_seed(2)
    vq = VectorQuantizer(2, 8, ema=False)
    first = torch.randn(1, 2, 1, 3)
    vq(first)
    assert len({tuple(code.tolist()) for code in vq.codebook}) == 8
    assert torch.cdist(vq.codebook, rows(first)).min(1).values.max() < 0.1


@pytest.mark.parametrize("ema", [True, False])
def test_dead_code_restart_revives_unused_codes(ema: bool) -> None:
    torch.manual_seed(3)
    vq = quantizer([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]], ema=ema, dead_after=3)
    batch = torch.rand(2, 2, 3, 3)  # never near code 2
    for _ in range(2):
        vq(batch)
    assert vq.codebook[2].min() > 99  # idle for 2 < 3 steps: kept
    vq(batch)
    assert is_row_of(vq.codebook[2], rows(batch))  # idle for 3 steps: re-seeded from recent z
    assert vq.codebook[:2].abs().max() < 2


def test_usage_perplexity_on_hand_case() -> None:
    vq = quantizer([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    assert vq.usage() == {"perplexity": 0.0, "in_use": 0.0}
    vq(as_map([[0.0, 0.1], [0.1, 0.0], [1.0, 0.1], [0.0, 0.9]]))  # codes 0, 0, 1, 2
    usage = vq.usage()
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert usage["perplexity"] == pytest.approx(math.exp(entropy), rel=1e-5)  # 2 ** 1.5
    assert usage["in_use"] == pytest.approx(0.75)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(4)
    vq = VectorQuantizer(3, 8, dead_after=2)
    for _ in range(3):
        vq(torch.randn(2, 3, 4, 4))
    state = vq.state_dict()
    assert "recent" not in state and "embed_sum" in state
    fresh = VectorQuantizer(3, 8, dead_after=2)
    fresh.load_state_dict(state)
    z = torch.randn(1, 3, 4, 4)
    assert torch.equal(fresh.nearest(z), vq.nearest(z))
    assert fresh.usage() == vq.usage()
    fresh(z)  # loaded as initialized: no re-seeding from this batch
    assert bool(fresh.initialized)


def _ddp_worker(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same construction on both ranks, as DDP would give
    vq = VectorQuantizer(2, 6, dead_after=2)
    torch.manual_seed(100 + rank)  # different data and random choices per rank
    for _ in range(4):
        vq(torch.randn(1, 2, 3, 3) + rank)
    # numpy copies: torch tensors would travel through shared memory owned by this (exiting) process
    queue.put((rank, {k: v.numpy().copy() for k, v in vq.state_dict().items()}))
    dist.barrier()
    dist.destroy_process_group()


def test_replicas_stay_identical_under_distributed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for w in workers:
        w.start()
    states = dict(queue.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])


def test_nearest_in_chunks_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    vq = VectorQuantizer(3, 8, data_init=False)
    z = torch.randn(2, 3, 5, 7)
    whole = vq.nearest(z)
    monkeypatch.setattr("vqcodec.quantize._DISTANCE_ELEMENTS", 8 * 4)  # 4 vectors per chunk
    assert torch.equal(vq.nearest(z), whole)
