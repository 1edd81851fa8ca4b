from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import tiny_model
from vqcodec.checkpoint import (INT8_SCALE, load_model, load_state, rng_state, save_model, save_state,
                                set_rng_state, unwrap, weights_digest)
from vqcodec.errors import ModelNotFoundError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    return tiny_model(seed=2)


def test_save_load_gives_identical_outputs(tmp_path, models):
    vqvae, prior = models
    path = tmp_path / "m.safetensors"
    save_model(path, vqvae, prior, metadata={"name": "tiny"})
    vqvae2, prior2, meta = load_model(path)
    assert vqvae2.config == vqvae.config and prior2 is not None and prior2.config == prior.config
    assert meta["name"] == "tiny" and json.loads(meta["vqvae_config"])["channels"] == 16
    assert not vqvae2.training and not prior2.training
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(vqvae(x).x_hat, vqvae2(x).x_hat)
        symbols = vqvae.encode(x)
        assert all(torch.equal(a, b) for a, b in zip(symbols, vqvae2.encode(x)))
        for order in ("fast", "raster"):
            for a, b in zip(prior.logits(symbols, order), prior2.logits(symbols, order)):
                assert torch.equal(a, b)


def test_file_layout_and_vqvae_only_files(tmp_path, models):
    vqvae, _ = models
    path = tmp_path / "vq.safetensors"
    save_model(path, _Compiled(vqvae), None)  # the compile wrapper must not leak into the keys
    with safe_open(str(path), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("vqvae.") and "_orig_mod" not in k for k in keys)
    assert "prior_config" not in meta
    vqvae2, prior2, _ = load_model(path)
    assert prior2 is None and vqvae2.config == vqvae.config
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_unwrap_strips_compile_wrappers(models):
    vqvae, _ = models
    assert unwrap(_Compiled(_Compiled(vqvae))) is vqvae


def test_reserved_metadata_is_refused(tmp_path, models):
    with pytest.raises(ValueError, match="reserved"):
        save_model(tmp_path / "m.safetensors", models[0], None, metadata={"vqvae_config": "{}"})


def test_load_model_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(ModelNotFoundError):
        load_model(junk)


def test_weights_digest_identifies_the_file(tmp_path, models):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_model(a, models[0], None)
    save_model(b, models[0], models[1])
    assert len(weights_digest(a)) == 8
    assert weights_digest(a) == weights_digest(a) != weights_digest(b)


def test_the_same_weights_always_give_the_same_file(tmp_path, models):
    # safetensors writes metadata in hash-map order, which varies from call to call; the digest
    # in every .vqc file must not depend on it.
    metadata = {f"key{i}": str(i) for i in range(12)}
    files = [tmp_path / f"{i}.safetensors" for i in range(6)]
    for path in files:
        save_model(path, *models, metadata=metadata)
    assert len({path.read_bytes() for path in files}) == 1
    vqvae, prior, meta = load_model(files[0])
    assert {k: meta[k] for k in metadata} == metadata and prior is not None
    with safe_open(files[0], "pt") as f:
        assert f.metadata()["key3"] == "3"


def test_state_round_trip_with_weights_only_and_rng(tmp_path, models):
    vqvae, _ = models
    optimizer = torch.optim.Adam(vqvae.parameters(), lr=1e-3)
    vqvae(torch.rand(1, 3, 16, 16)).x_hat.mean().backward()
    optimizer.step()
    state = {"step": 7, "model": vqvae.state_dict(), "optimizer": optimizer.state_dict(), "rng": [rng_state()]}
    path = tmp_path / "state.pt"
    save_state(path, state)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    loaded = load_state(path)  # torch.load(weights_only=True) inside
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["decoder.0.weight"], vqvae.state_dict()["decoder.0.weight"])
    set_rng_state(loaded["rng"][0])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])
    assert not list(tmp_path.glob("*.tmp"))


class _Payload:
    pass


class _Compiled(torch.nn.Module):
    """Stands in for torch.compile's wrapper (same `_orig_mod` attribute), without importing dynamo."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_load_state_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_state(path)


def test_a_compact_file_leaves_out_embed_sum_and_loading_rebuilds_it(tmp_path):
    vqvae, prior = tiny_model(seed=3)
    vqvae.train()
    with torch.no_grad():  # EMA updates move the cluster sizes away from their initial ones
        for _ in range(3):
            vqvae(torch.rand(2, 3, 16, 24))
    vqvae.eval()
    full, compact = tmp_path / "full.safetensors", tmp_path / "compact.safetensors"
    save_model(full, vqvae, prior)
    save_model(compact, vqvae, prior, compact=True)
    with safe_open(str(compact), framework="pt") as f:
        assert not [k for k in f.keys() if k.endswith("embed_sum")]
        assert f.get_tensor("vqvae.quantizers.0.last_used").dtype == torch.int32  # counters in 32 bits
    assert compact.stat().st_size < full.stat().st_size
    loaded, _, _ = load_model(compact)
    for original, rebuilt in zip(vqvae.quantizers, loaded.quantizers):
        assert not torch.allclose(original.cluster_size, torch.ones_like(original.cluster_size))
        assert torch.equal(original.codebook, rebuilt.codebook)
        torch.testing.assert_close(rebuilt.embed_sum, original.embed_sum, rtol=1e-5, atol=1e-6)
        for name in ("last_used", "seeded_at", "step"):  # back in their int64 buffers, unchanged
            kept = getattr(rebuilt, name)
            assert kept.dtype == torch.int64 and torch.equal(kept, getattr(original, name))
    assert int(vqvae.quantizers[0].last_used.max()) > 0  # the counters compared above are not all zero


def test_an_int8_prior_is_stored_in_8_bits_and_loads_within_a_step_of_its_scale(tmp_path, models):
    vqvae, prior = models
    full, small = tmp_path / "full.safetensors", tmp_path / "int8.safetensors"
    save_model(full, vqvae, prior)
    save_model(small, vqvae, prior, int8=("prior",))
    with safe_open(str(small), framework="pt") as f:
        stored, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    scaled = [k[: -len(INT8_SCALE)] for k in stored if k.endswith(INT8_SCALE)]
    assert scaled and all(k.startswith("prior.") and stored[k].dtype == torch.int8 for k in scaled)
    assert all(stored[k].dtype == torch.float32 for k in stored if k.startswith("vqvae.") and stored[k].dim() >= 2)
    prior_bytes = sum(v.numel() * v.element_size() for v in prior.state_dict().values())  # float32
    assert small.stat().st_size < full.stat().st_size - 0.6 * prior_bytes  # 1 byte a weight, not 4 (+ scales)
    vqvae2, prior2, _ = load_model(small)
    original = prior.state_dict()
    for key, value in prior2.state_dict().items():
        if f"prior.{key}" in scaled:  # off by at most half a step of its row's scale
            step = original[key].reshape(value.shape[0], -1).abs().amax(1) / 127
            error = (value - original[key]).reshape(value.shape[0], -1).abs().amax(1)
            assert torch.all(error <= 0.51 * step + 1e-6)
        else:  # biases and other vectors: fp16
            assert stored[f"prior.{key}"].dtype == torch.float16
            assert torch.equal(value, original[key].half().float())
    x = torch.rand(1, 3, 16, 24)
    assert all(torch.equal(a, b) for a, b in zip(vqvae.encode(x), vqvae2.encode(x)))  # the VQ-VAE is untouched
    # A scale whose weight is missing is a malformed file, not a traceback.
    del stored[scaled[0]]
    save_file(stored, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ModelNotFoundError, match="8-bit"):
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="int8"):
        save_model(tmp_path / "x.safetensors", vqvae, prior, int8=("decoder",))


def test_a_model_with_an_8_bit_vqvae_codes_and_decodes_exactly(tmp_path, models):
    """Both parts in 8 bits (benchmarks/weight_storage.py measures what that costs): the VQ-VAE's
    weights and codebooks are stored as int8 rows, and the loaded model is an ordinary codec."""
    from conftest import photo_like
    from vqcodec.codec import Codec

    vqvae, prior = models
    path = tmp_path / "small.safetensors"
    save_model(path, vqvae, prior, compact=True, int8=("vqvae", "prior"))
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    codebooks = [k for k in stored if k.startswith("vqvae.quantizers.") and k.endswith(".codebook")]
    assert codebooks and all(stored[k].dtype == torch.int8 for k in codebooks)
    assert not [k for k, v in stored.items() if v.dim() >= 2 and v.is_floating_point()
                and not k.endswith(INT8_SCALE)]  # no weight matrix or kernel left in fp16/fp32
    codec = Codec.load(path)
    image = photo_like(40, 56, seed=7)
    data = codec.compress(image, optimize=0)
    assert torch.equal(torch.cat([s.flatten() for s in codec.decode_symbols(data).levels]),
                       torch.cat([s.flatten() for s in codec.encode(image, optimize=0).levels]))
    decoded = np.asarray(codec.decompress(data))
    assert decoded.shape == image.shape
