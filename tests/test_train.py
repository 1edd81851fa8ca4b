"""Training on the CPU with tiny models: loss goes down, resume repeats a straight run, DDP agrees, CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from conftest import photo_like, tiny_model
from vqcodec.checkpoint import load_model, load_state, save_model
from vqcodec.data import list_images, split_files
from vqcodec.runtime import lr_factor
from vqcodec.train import (PriorTrainConfig, TrainConfig, resolve_prior_config, structural_similarity,
                           train_config_from_dict, train_prior, train_vqvae)
from vqcodec.vqvae import VQVAE2Config

TINY = VQVAE2Config(channels=16, res_blocks=1, res_channels=8, downsample=(2, 2), codebook_size=(16, 8),
                    code_dim=(8, 8), dead_after=1000)
FAST = {"crop": 16, "batch_size": 4, "num_workers": 0, "device": "cpu", "warmup_steps": 2, "lr": 3e-3}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i in range(12):
        Image.fromarray(photo_like(32, 32, seed=i)).save(root / f"{i:02d}.png")
    return root


def records(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def test_short_training_lowers_the_loss(images, tmp_path):
    cfg = TrainConfig(data=str(images), out=str(tmp_path), vqvae=TINY, steps=25, log_every=5,
                      val_every=25, val_fraction=0.25, **FAST)
    path = train_vqvae(cfg)
    train = records(tmp_path / "log.jsonl", "train")
    assert train[-1]["loss"] < 0.9 * train[0]["loss"]
    assert {"psnr", "perplexity", "in_use", "images_per_s", "lr"} <= set(train[-1])
    assert len(train[-1]["perplexity"]) == 2 and train[-1]["images_per_s"] > 0
    assert records(tmp_path / "log.jsonl", "val")[-1]["val_psnr"] > 0
    vqvae, prior, meta = load_model(path)
    assert prior is None and vqvae.config == TINY and meta["train_step"] == "25"
    assert json.loads((tmp_path / "vqvae_config.json").read_text())["channels"] == 16


def test_resume_repeats_an_uninterrupted_run(images, tmp_path):
    base = dict(data=str(images), vqvae=TINY, steps=5, log_every=1, val_fraction=0.0, **FAST)
    straight = train_vqvae(TrainConfig(out=str(tmp_path / "a"), **base))
    # max_minutes=0 stops at the first check (step 1), mid-epoch, with a checkpoint.
    train_vqvae(TrainConfig(out=str(tmp_path / "b"), max_minutes=0, **base))
    assert load_state(tmp_path / "b" / "state.pt")["step"] == 1
    resumed = train_vqvae(TrainConfig(out=str(tmp_path / "b"), resume=True, **base))
    state = load_state(tmp_path / "b" / "state.pt")
    assert state["step"] == 5 and state["scheduler"]["last_epoch"] == 5
    a, b = load_model(straight)[0].state_dict(), load_model(resumed)[0].state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _ddp_worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    import vqcodec.train as train_module

    placed = {}
    place = train_module.place_model

    def spy(model, rt, **kwargs):  # keeps this replica's model to compare afterwards
        placed["model"] = place(model, rt, **kwargs)
        return placed["model"]

    train_module.place_model = spy
    cfg = TrainConfig(data=data, out=out, vqvae=TINY, steps=3, log_every=1, val_fraction=0.0, **FAST)
    train_module.train_vqvae(cfg)
    torch.save(placed["model"].state_dict(), Path(out) / f"replica{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_replicas_agree(images, tmp_path):
    # fork: the children inherit the imported modules instead of importing torch again
    mp.start_processes(_ddp_worker, args=(_free_port(), str(images), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    r0 = torch.load(tmp_path / "replica0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "replica1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    saved = load_model(tmp_path / "vqvae.safetensors")[0].state_dict()
    assert all(torch.equal(saved[k], r0[k]) for k in saved)
    assert load_state(tmp_path / "state.pt")["step"] == 3
    assert records(tmp_path / "log.jsonl", "train")[-1]["images_per_s"] > 0


def test_prior_training_lowers_the_loss(images, tmp_path):
    vqvae, _ = tiny_model(seed=3)  # downsample (4, 2): crop 32 gives 8x8 and 4x4 symbol maps
    save_model(tmp_path / "vq.safetensors", vqvae, None)
    cfg = PriorTrainConfig(data=str(images), out=str(tmp_path), vqvae=str(tmp_path / "vq.safetensors"),
                           prior={"channels": 8, "layers": 2, "fast_layers": 2, "fast_groups": [2, 2]},
                           steps=20, log_every=5, val_every=20, val_fraction=0.25,
                           **{**FAST, "crop": 32})
    path = train_prior(cfg)
    train = records(tmp_path / "prior_log.jsonl", "train")
    assert train[-1]["loss"] < 0.95 * train[0]["loss"]
    val = records(tmp_path / "prior_log.jsonl", "val")[-1]
    assert len(val["val_bits_per_symbol_fast"]) == 2 and val["val_bpp_raster"] > 0
    vq2, prior, _ = load_model(path)
    assert prior is not None and prior.config.channels == 8
    assert all(torch.equal(a, b) for a, b in zip(vq2.state_dict().values(), vqvae.state_dict().values()))


def test_prior_config_comes_from_the_vqvae():
    cfg = resolve_prior_config(TINY, {"channels": 12})
    assert cfg.codebook_size == (16, 8) and cfg.upsample == (2,) and cfg.channels == 12
    with pytest.raises(ValueError, match="does not match"):
        resolve_prior_config(TINY, {"codebook_size": [16, 16]})


def test_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_configs_refuse_bad_values():
    with pytest.raises(ValueError):
        TrainConfig(data="d", out="o", steps=0)
    with pytest.raises(ValueError, match="unknown"):
        train_config_from_dict({"data": "d", "out": "o", "stpes": 3})
    cfg = train_config_from_dict({"data": "d", "out": "o", "vqvae": {"channels": 32}})
    assert cfg.vqvae.channels == 32


def test_small_crops_fall_back_to_ssim():
    with pytest.warns(UserWarning, match="SSIM"):
        similarity = structural_similarity(16)
    x = torch.rand(2, 3, 16, 16)
    assert float(similarity(x, x)) == pytest.approx(1.0)


def test_cli_train_and_recipe_errors(images, tmp_path):
    from vqcodec.cli.training import train_command

    (tmp_path / "vq.json").write_text(json.dumps(TINY.to_dict()))
    args = ["--data", str(images), "--out", str(tmp_path / "run"), "--vqvae-config", str(tmp_path / "vq.json"),
            "--steps", "2", "--crop", "16", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
            "--val-fraction", "0"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "vqvae.safetensors").is_file()
    from vqcodec.cli.training import train_prior_command

    (tmp_path / "prior.json").write_text(json.dumps({"channels": 8, "layers": 1, "fast_layers": 2}))
    prior_args = [*args[:4], "--vqvae", str(tmp_path / "run" / "vqvae.safetensors"),
                  "--prior-config", str(tmp_path / "prior.json"), *args[6:]]
    result = CliRunner().invoke(train_prior_command, prior_args)
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "run" / "model.safetensors")[1].config.layers == 1
    result = CliRunner().invoke(train_command, [*args, "--config", "no-such-recipe"])
    assert result.exit_code == 2 and "no-such-recipe" in result.output
    result = CliRunner().invoke(train_command, [*args, "--config", "vqc-5"])
    assert result.exit_code == 2 and "runs vqc-4's networks" in result.output and "--config vqc-4" in result.output
    result = CliRunner().invoke(train_command, ["--out", str(tmp_path)])
    assert result.exit_code == 2 and "--data is required" in result.output


def test_cli_refine_stage_resumes_the_run_on_the_recipes_larger_crops(images, tmp_path):
    from vqcodec.cli.training import train_command
    from vqcodec.recipes import get

    (tmp_path / "vq.json").write_text(json.dumps(TINY.to_dict()))
    base = ["--config", "vqc-3", "--data", str(images), "--out", str(tmp_path / "run"), "--vqvae-config",
            str(tmp_path / "vq.json"), "--num-workers", "0", "--device", "cpu", "--val-fraction", "0"]
    result = CliRunner().invoke(train_command, [*base, "--steps", "2", "--crop", "16", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    # The refine stage brings the recipe's crop; given options (steps, batch) still win over it.
    result = CliRunner().invoke(train_command, [*base, "--refine", "--steps", "3", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "run" / "train_config.json").read_text())
    refine = get("vqc-3").vqvae_refine
    assert (written["crop"], written["batch_size"], written["resume"]) == (refine.crop, 4, True)
    assert written["top_only"] == get("vqc-3").top_only > 0
    assert load_state(tmp_path / "run" / "state.pt")["step"] == 3  # resumed at 2, not restarted

    result = CliRunner().invoke(train_command, base[2:] + ["--refine"])
    assert result.exit_code == 2 and "--refine needs --config" in result.output


@pytest.mark.parametrize("name", ["vqc-1", "vqc-2", "vqc-3", "vqc-4"])
def test_each_bundled_model_has_the_architecture_its_recipe_builds(name):
    from dataclasses import replace

    from vqcodec.models import resolve
    from vqcodec.recipes import get

    recipe = get(name)
    vqvae, prior, _ = load_model(resolve(name)[1])
    blocks = recipe.decoder.refine_blocks if recipe.decoder else recipe.vqvae.refine_blocks
    assert vqvae.config == replace(recipe.vqvae, refine_blocks=blocks)  # the decoder stage grows the decoder
    assert prior.config == resolve_prior_config(vqvae.config, recipe.prior)


def test_the_bundled_weights_fit_the_package_budget():
    from vqcodec.models import BUNDLED, resolve

    total = sum(resolve(name)[1].stat().st_size for name in BUNDLED)
    assert total <= 16_000_000, f"bundled weights take {total:,} bytes; the budget is 16 MB"


def test_prior_fine_tuning_starts_from_the_given_models_prior(images, tmp_path, tiny_model_path):
    from vqcodec.cli.training import train_prior_command

    vqvae, prior = tiny_model()
    common = ["--data", str(images), "--vqvae", str(tiny_model_path), "--steps", "1", "--crop", "32",
              "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--val-fraction", "0",
              "--lr", "1e-30", "--warmup-steps", "0"]  # a step this small leaves the weights as they started
    result = CliRunner().invoke(train_prior_command, [*common, "--out", str(tmp_path / "a"), "--init-prior",
                                                      str(tiny_model_path), "--prior-config", _json(tmp_path, prior),
                                                      "--val-data", str(images)])
    assert result.exit_code == 0, result.output
    tuned = load_model(tmp_path / "a" / "model.safetensors")[1].state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in prior.state_dict().items())
    # The log starts with the starting prior's validation, here equal to the (unchanged) final one.
    val = records(tmp_path / "a" / "prior_log.jsonl", "val")
    assert [r["step"] for r in val] == [0, 1] and val[0]["val_bpp_fast"] == pytest.approx(val[1]["val_bpp_fast"])

    (tmp_path / "other.json").write_text(json.dumps({"channels": 8, "layers": 1, "fast_layers": 2}))
    result = CliRunner().invoke(train_prior_command, [*common, "--out", str(tmp_path / "b"), "--init-prior",
                                                      str(tiny_model_path), "--prior-config", str(tmp_path / "other.json")])
    assert result.exit_code == 1 and "init_prior" in result.output and "prior config" in result.output


def test_prior_training_of_one_order_leaves_the_other_orders_networks_as_they_were(images, tmp_path,
                                                                                    tiny_model_path):
    from vqcodec.cli.training import train_prior_command

    vqvae, prior = tiny_model()
    args = ["--data", str(images), "--vqvae", str(tiny_model_path), "--steps", "3", "--crop", "32",
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--val-fraction", "0", "--lr", "1e-2",
            "--warmup-steps", "0", "--init-prior", str(tiny_model_path), "--prior-config", _json(tmp_path, prior),
            "--out", str(tmp_path / "a"), "--order", "raster"]
    result = CliRunner().invoke(train_prior_command, args)
    assert result.exit_code == 0, result.output
    tuned = load_model(tmp_path / "a" / "model.safetensors")[1]
    before = prior.state_dict()
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("raster.") for k in changed)
    assert all(k in changed for k, v in tuned.raster.named_parameters(prefix="raster") if v.requires_grad)
    assert "nats_raster" in records(tmp_path / "a" / "prior_log.jsonl", "train")[-1]
    assert json.loads((tmp_path / "a" / "prior_train_config.json").read_text())["orders"] == ["raster"]

    result = CliRunner().invoke(train_prior_command, [*args[:-1], "sideways"])
    assert result.exit_code == 2 and "sideways" in result.output
    with pytest.raises(ValueError, match="orders"):
        PriorTrainConfig(data=str(images), out=str(tmp_path), vqvae=str(tiny_model_path), orders=("raster",) * 2)


def test_a_deeper_fast_order_starts_from_the_trained_one():
    import dataclasses

    from vqcodec.train import grown_prior

    vqvae, prior = tiny_model()
    for net in prior.fast:  # trained-looking weights: the tiny model's units are not all zero
        torch.nn.init.normal_(net.inp.weight, std=0.3)
    symbols = vqvae.encode(torch.rand(2, 3, 48, 64))
    deeper = grown_prior(prior, dataclasses.replace(prior.config, fast_layers=4), ("fast",)).eval()
    assert len(deeper.fast[0].units) == 2 and len(prior.fast[0].units) == 0
    for order in ("fast", "raster"):  # new units start as the identity: the same logits as the source
        for mine, theirs in zip(deeper.logits(symbols, order), prior.logits(symbols, order)):
            assert torch.equal(mine, theirs)

    # Another group side: the input projection is new, the embedding and head carry over.
    regrouped = grown_prior(prior, dataclasses.replace(prior.config, fast_groups=(4, 2)), ("fast",))
    assert regrouped.fast[0].inp.weight.shape != prior.fast[0].inp.weight.shape
    assert torch.equal(regrouped.fast[0].embed.weight, prior.fast[0].embed.weight)
    assert torch.equal(regrouped.fast[0].head[-1].weight, prior.fast[0].head[-1].weight)
    assert torch.equal(regrouped.raster[0].embed.weight, prior.raster[0].embed.weight)

    shallower = grown_prior(deeper, prior.config, ("fast",)).eval()  # back to the source's depth
    assert all(torch.equal(a, b) for a, b in zip(shallower.logits(symbols, "fast"), prior.logits(symbols, "fast")))

    with pytest.raises(ValueError, match="fast_layers"):  # the fast order is not training: it must match
        grown_prior(prior, dataclasses.replace(prior.config, fast_layers=4), ("raster",))
    with pytest.raises(ValueError, match="channels"):
        grown_prior(prior, dataclasses.replace(prior.config, channels=8), ("fast",))


def test_a_wider_fast_order_computes_the_same_logits_and_trains_its_new_channels():
    import dataclasses

    from vqcodec.train import grown_prior

    vqvae, prior = tiny_model()
    deeper = grown_prior(prior, dataclasses.replace(prior.config, fast_layers=4), ("fast",))
    for net in deeper.fast:  # trained-looking weights everywhere, the units and biases included
        for param in net.parameters():
            torch.nn.init.normal_(param, std=0.2)
    symbols = vqvae.encode(torch.rand(2, 3, 48, 64))
    width = deeper.config.fast_width
    wider_config = dataclasses.replace(deeper.config, fast_channels=width + 6, fast_layers=5)
    wider = grown_prior(deeper, wider_config, ("fast",))
    assert wider.fast[0].embed.weight.shape[1] == width + 6 and wider.raster[0].embed.weight.shape[1] == width
    for mine, theirs in zip(wider.logits(symbols, "fast"), deeper.logits(symbols, "fast")):
        assert torch.allclose(mine, theirs, atol=1e-5)

    wider.loss(symbols, "fast").backward()  # the head's new inputs get gradient, so training grows them
    for net in wider.fast:
        assert net.head[-1].weight.grad[:, width:].abs().sum() > 0

    with pytest.raises(ValueError, match="narrower"):
        grown_prior(wider, deeper.config, ("fast",))


def _json(tmp_path: Path, prior) -> str:
    """The tunable fields of `prior`'s config as a --prior-config file."""
    path = tmp_path / "prior.json"
    fields = prior.config.to_dict()
    path.write_text(json.dumps({k: fields[k] for k in ("channels", "layers", "fast_layers", "fast_groups")}))
    return str(path)


def test_top_only_samples_are_decoded_from_the_top_level_alone():
    from vqcodec.vqvae import VQVAE2

    torch.manual_seed(0)
    model = VQVAE2(TINY).eval()
    x = torch.rand(2, 3, 16, 16)
    hidden = model(x, torch.tensor([True, False])).x_hat
    plain = model(x).x_hat
    assert torch.equal(hidden[1], plain[1]) and not torch.allclose(hidden[0], plain[0])
    # A sample decoded from the top alone no longer depends on the bottom code it was given.
    with torch.no_grad():
        model.quantizers[0].codebook.add_(torch.randn_like(model.quantizers[0].codebook))
    assert torch.equal(model(x, torch.tensor([True, False])).x_hat[0], hidden[0])


def test_top_only_training_weighs_the_full_decode_first(images, tmp_path):
    cfg = TrainConfig(data=str(images), out=str(tmp_path), vqvae=TINY, steps=6, log_every=3, val_every=1000,
                      ckpt_every=1000, top_only=0.5, top_only_weight=0.25, **FAST)
    train_vqvae(cfg)
    logged = records(tmp_path / "log.jsonl", "train")
    assert len(logged) == 2 and all(r["mse"] > 0 for r in logged)
    with pytest.raises(ValueError, match="top_only"):
        TrainConfig(data=str(images), out=str(tmp_path), vqvae=TINY, top_only=1.0)


# ----------------------------------------------------------------------------- decoder fine-tuning


def test_growing_the_decoder_keeps_its_output_until_trained():
    from vqcodec.train import grown_vqvae

    vqvae, _ = tiny_model()
    grown = grown_vqvae(vqvae, 2).eval()
    assert grown.config.refine_blocks == 2 and len(grown.refine) == 2
    symbols = vqvae.encode(torch.rand(1, 3, 24, 40))
    assert torch.equal(grown.decode(symbols), vqvae.decode(symbols))  # new blocks start as the identity
    assert grown_vqvae(grown, 2) is grown and grown_vqvae(grown, None) is grown
    with pytest.raises(ValueError, match="already has 2"):
        grown_vqvae(grown, 1)


def test_tail_blocks_start_as_the_identity_and_then_change_the_picture():
    from vqcodec.train import grown_vqvae

    vqvae, _ = tiny_model()
    grown = grown_vqvae(vqvae, None, 2).eval()
    assert (grown.config.refine_blocks, grown.config.tail_blocks) == (0, 2)
    # They work on the features the last layer reads (half resolution for an x4 grid).
    assert grown.tail[0].body[1].in_channels == vqvae.decoder[-1].in_channels
    symbols = vqvae.encode(torch.rand(1, 3, 24, 40))
    assert torch.equal(grown.decode(symbols), vqvae.decode(symbols))
    assert any(p is q for module in grown.decoder_modules() for p in module.parameters()
               for q in grown.tail.parameters())  # decoder fine-tuning trains them
    torch.nn.init.normal_(grown.tail[1].body[-1].weight, std=0.1)
    assert not torch.allclose(grown.decode(symbols), vqvae.decode(symbols))
    with pytest.raises(ValueError, match="tail_blocks=1: the model already has 2"):
        grown_vqvae(grown, None, 1)


def test_decoder_fine_tuning_keeps_symbols_and_prior_and_improves_the_picture(images, tmp_path):
    from vqcodec.prior import PriorConfig, SymbolPrior
    from vqcodec.train import DecoderTrainConfig, train_decoder

    # A briefly trained VQ-VAE (random ones code every crop to nearly one symbol) and a prior.
    vq_path = train_vqvae(TrainConfig(data=str(images), out=str(tmp_path / "vq"), vqvae=TINY, steps=30,
                                      val_fraction=0.0, **FAST))
    prior = SymbolPrior(PriorConfig(codebook_size=TINY.codebook_size, upsample=(2,), channels=8, layers=1,
                                    fast_layers=2, fast_groups=(2, 2)))
    save_model(tmp_path / "model.safetensors", load_model(vq_path)[0], prior)
    before, prior_before, _ = load_model(tmp_path / "model.safetensors")
    cfg = DecoderTrainConfig(data=str(images), out=str(tmp_path / "dec"), model=str(tmp_path / "model.safetensors"),
                             refine_blocks=1, tail_blocks=1, steps=40, log_every=10, val_every=40,
                             val_data=str(images), **FAST)
    after, prior_after, meta = load_model(train_decoder(cfg))
    val = records(tmp_path / "dec" / "decoder_log.jsonl", "val")  # the log starts with the untouched model
    assert [r["step"] for r in val] == [0, 40] and val[1]["val_psnr"] > val[0]["val_psnr"]
    assert (after.config.refine_blocks, after.config.tail_blocks) == (1, 1) and meta["stage"] == "decoder"
    # The run records the model it started from (a model card tells growth from more training by it).
    source = VQVAE2Config.from_dict(json.loads((tmp_path / "dec" / "source_vqvae_config.json").read_text()))
    assert source == before.config and source.refine_blocks == 0
    x = torch.stack([torch.from_numpy(photo_like(32, 32, seed=i)).permute(2, 0, 1) / 255.0 for i in range(12)])
    # Encoder side and prior are untouched: every image keeps its symbols and their probabilities ...
    symbols = before.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(after.encode(x), symbols))
    assert all(torch.equal(v, prior_after.state_dict()[k]) for k, v in prior_before.state_dict().items())
    frozen = [k for k in before.state_dict() if k.startswith(("encoders.", "pre_quant.", "quantizers.",
                                                               "cond_decoders."))]
    assert frozen and all(torch.equal(before.state_dict()[k], after.state_dict()[k]) for k in frozen)
    # ... and the same symbols decode closer to the images.
    with torch.no_grad():
        mse_before = F.mse_loss(before.decode(symbols, (32, 32)), x)
        mse_after = F.mse_loss(after.decode(symbols, (32, 32)), x)
    assert mse_after < 0.8 * mse_before


def test_cli_train_decoder_takes_the_recipes_stage(images, tmp_path, tiny_model_path, monkeypatch):
    from dataclasses import replace

    from vqcodec import recipes
    from vqcodec.cli.training import train_decoder_command
    from vqcodec.recipes import get

    base = ["--data", str(images), "--num-workers", "0", "--device", "cpu", "--val-fraction", "0"]
    result = CliRunner().invoke(train_decoder_command, [*base, "--config", "vqc-3", "--model", str(tiny_model_path),
                                                        "--out", str(tmp_path / "run"), "--steps", "2",
                                                        "--crop", "32", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "run" / "decoder_train_config.json").read_text())
    stage = get("vqc-3").decoder
    assert (written["refine_blocks"], written["tail_blocks"], written["lr"], written["steps"]) == (
        stage.refine_blocks, stage.tail_blocks, stage.lr, 2)
    trained = load_model(tmp_path / "run" / "model.safetensors")[0].config
    assert (trained.refine_blocks, trained.tail_blocks) == (stage.refine_blocks, stage.tail_blocks)
    result = CliRunner().invoke(train_decoder_command, [*base, "--config", "vqc-3", "--model", str(tiny_model_path),
                                                        "--out", str(tmp_path / "tail"), "--steps", "1", "--crop", "32",
                                                        "--batch-size", "2", "--tail-blocks", str(stage.tail_blocks + 1)])
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "tail" / "model.safetensors")[0].config.tail_blocks == stage.tail_blocks + 1

    result = CliRunner().invoke(train_decoder_command, [*base, "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--model is required" in result.output
    monkeypatch.setitem(recipes.RECIPES, "no-decoder", replace(get("vqc-1"), decoder=None))
    result = CliRunner().invoke(train_decoder_command, [*base, "--config", "no-decoder", "--model", str(tiny_model_path),
                                                        "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "no decoder stage" in result.output


def test_cli_protects_a_run_folder(images, tmp_path, tiny_model_path, other_model_path):
    """Without --resume a run folder is never overwritten; with it, only the same architecture continues."""
    from vqcodec.cli.training import train_command, train_prior_command

    (tmp_path / "vq.json").write_text(json.dumps(TINY.to_dict()))
    run = tmp_path / "run"
    args = ["--data", str(images), "--out", str(run), "--vqvae-config", str(tmp_path / "vq.json"), "--steps", "2",
            "--crop", "16", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--val-fraction", "0"]
    assert CliRunner().invoke(train_command, args).exit_code == 0
    state = (run / "state.pt").read_bytes()
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 1 and "already holds a run" in result.output and "--resume" in result.output
    (tmp_path / "wide.json").write_text(json.dumps({**TINY.to_dict(), "codebook_size": [32, 8]}))
    result = CliRunner().invoke(train_command, [*args, "--resume", "--vqvae-config", str(tmp_path / "wide.json")])
    assert result.exit_code == 1 and "another vqvae_config" in result.output and "Traceback" not in result.output
    assert json.loads((run / "vqvae_config.json").read_text()) == json.loads(json.dumps(TINY.to_dict()))
    assert (run / "state.pt").read_bytes() == state  # the refused calls changed nothing

    prior = ["--data", str(images), "--steps", "1", "--crop", "16", "--batch-size", "4", "--num-workers", "0",
             "--device", "cpu", "--val-fraction", "0", "--out", str(tmp_path / "prior")]
    assert CliRunner().invoke(train_prior_command, [*prior, "--vqvae", str(tiny_model_path)]).exit_code == 0
    result = CliRunner().invoke(train_prior_command, [*prior, "--vqvae", str(other_model_path), "--resume",
                                                      "--steps", "2"])
    assert result.exit_code == 1 and "another symbols_source" in result.output  # other weights, other symbols


def test_cli_training_input_errors_are_one_line(images, tmp_path):
    from vqcodec.cli.training import train_command, train_prior_command

    base = ["--data", str(images), "--steps", "1", "--crop", "16", "--batch-size", "4", "--num-workers", "0",
            "--device", "cpu"]
    (tmp_path / "bad.json").write_text(json.dumps({**TINY.to_dict(), "channels": "many"}))
    (tmp_path / "vq.json").write_text(json.dumps(TINY.to_dict()))
    result = CliRunner().invoke(train_command, [*base, "--out", str(tmp_path / "a"), "--vqvae-config",
                                                str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "bad config" in result.output and not (tmp_path / "a").exists()
    result = CliRunner().invoke(train_prior_command, [*base, "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--vqvae is required" in result.output
    result = CliRunner().invoke(train_command, ["--config", "vqc-1", "--refine", *base, "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "holds no state.pt" in result.output and not (tmp_path / "c").exists()
    mixed = tmp_path / "mixed"
    shutil.copytree(images, mixed)
    (mixed / "notes.png").write_text("not an image")
    result = CliRunner().invoke(train_command, [*base, "--data", str(mixed), "--out", str(tmp_path / "d"),
                                                "--vqvae-config", str(tmp_path / "vq.json")])
    assert result.exit_code != 0 and "notes.png is not a readable image" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_prior_training_on_resampled_images_takes_the_scales_in_turn_and_validates_each(images, tmp_path,
                                                                                          tiny_model_path):
    from vqcodec.cli.training import train_prior_command
    from vqcodec.resample import to_coded_size

    x = torch.rand(2, 3, 32, 32)
    assert to_coded_size(x, 1.0) is x and to_coded_size(x, 1.5).shape == (2, 3, 48, 48)
    _, prior = tiny_model()
    args = ["--data", str(images), "--vqvae", str(tiny_model_path), "--steps", "2", "--crop", "32",
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--val-fraction", "0.25",
            "--val-every", "2", "--warmup-steps", "0", "--init-prior", str(tiny_model_path),
            "--prior-config", _json(tmp_path, prior), "--out", str(tmp_path / "a"), "--scale", "1", "--scale", "1.5"]
    result = CliRunner().invoke(train_prior_command, args)
    assert result.exit_code == 0, result.output
    val = records(tmp_path / "a" / "prior_log.jsonl", "val")[-1]
    # x1.5 gives 2.25x the symbols of the same pictures, so more bits per original pixel.
    assert val["val_bpp_fast_x1.5"] > 1.5 * val["val_bpp_fast"] > 0
    assert len(val["val_bits_per_symbol_raster_x1.5"]) == 2
    assert json.loads((tmp_path / "a" / "prior_train_config.json").read_text())["scales"] == [1.0, 1.5]

    result = CliRunner().invoke(train_prior_command, [*args[:-1], "0.5"])
    assert result.exit_code == 2 and "0.5" in result.output
    with pytest.raises(ValueError, match="scales"):
        PriorTrainConfig(data=str(images), out=str(tmp_path), vqvae=str(tiny_model_path), scales=(1.5, 1.5))


def test_prior_training_on_the_encoders_own_symbols_learns_them(images, tmp_path, tiny_model_path):
    from vqcodec.cli.training import train_prior_command

    _, prior = tiny_model()
    args = ["--data", str(images), "--vqvae", str(tiny_model_path), "--steps", "8", "--crop", "16",
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--val-fraction", "0.25", "--lr", "1e-2",
            "--warmup-steps", "0", "--prior-config", _json(tmp_path, prior), "--order", "fast", "--symbols", "rdo",
            "--rdo-images", "5", "--rdo-steps", "3", "--seed", "7", "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(train_prior_command, [*args, "--init-prior", str(tiny_model_path)])
    assert result.exit_code == 0, result.output
    stored = torch.load(tmp_path / "a" / "rdo_symbols.pt", weights_only=True)
    assert len(stored["maps"]) == 5 and stored["recipe"]["steps"] == 3 and stored["recipe"]["order"] == "fast"
    held_out = split_files(list_images(images), 0.25, seed=0)[1]  # --seed does not move the split
    assert held_out and not {p.name for p in held_out} & set(stored["recipe"]["files"])  # training images only
    tuned = load_model(tmp_path / "a" / "model.safetensors")[1]
    symbols = [torch.stack([m[level].long() for m in stored["maps"]]) for level in range(2)]
    with torch.no_grad():
        bits = [float(sum(b.sum() for b in p.bits(symbols, "fast"))) for p in (prior, tuned)]
    assert bits[1] < bits[0]  # it learned the set
    assert json.loads((tmp_path / "a" / "prior_train_config.json").read_text())["symbols"] == "rdo"

    for extra in [[], ["--init-prior", str(tiny_model_path), "--order", "raster"]]:
        result = CliRunner().invoke(train_prior_command, [*args, *extra, "--out", str(tmp_path / "b")])
        assert result.exit_code == 2 and "init_prior" in result.output and "one trained order" in result.output


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_training_runs_in_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, has_bf16):
    from vqcodec import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    rt = runtime.Runtime(device=torch.device("cpu"))
    with runtime.autocast(rt, True):
        assert torch.is_autocast_enabled("cpu") is has_bf16
        assert (torch.nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.bfloat16) is has_bf16
    with runtime.autocast(rt, False):
        assert not torch.is_autocast_enabled("cpu")
