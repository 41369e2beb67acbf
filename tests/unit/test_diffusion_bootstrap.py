"""The diffusion demo's warm start: procedural labelled images, a DDPM saved as a diffusers pipeline, cached."""

import io
import json

import numpy as np
import pytest

from launch.procedural_images import CLASS_NAMES, make_dataset, render


def test_the_dataset_is_deterministic_balanced_and_in_range():
    images, labels = make_dataset(60, seed=3, size=16)
    again, same_labels = make_dataset(60, seed=3, size=16)
    assert images.shape == (60, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert (images == again).all() and (labels == same_labels).all()
    assert np.bincount(labels.numpy()).tolist() == [10] * len(CLASS_NAMES)
    assert not (make_dataset(60, seed=4, size=16)[0] == images).all()


def test_images_range_from_smooth_to_textured_so_compressibility_can_be_learned():
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = []
    for i in range(60):
        buf = io.BytesIO()
        Image.fromarray(render(i % len(CLASS_NAMES), rng)).save(buf, format="JPEG", quality=95)
        sizes.append(buf.tell())
    assert max(sizes) / min(sizes) > 1.5


def test_bootstrap_writes_a_cached_class_conditional_pipeline(tmp_path, monkeypatch):
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

    import launch.diffusion_bootstrap as boot

    out = boot.bootstrap_diffusion(tmp_path / "pipe", size=16, train_steps=3, batch_size=4, dataset_size=12)
    DDPMPipeline.from_pretrained(out)
    unet = UNet2DModel.from_pretrained(out, subfolder="unet")
    assert unet.config.num_class_embeds == len(CLASS_NAMES) + 1 and unet.config.sample_size == 16
    assert DDIMScheduler.from_pretrained(out, subfolder="scheduler").config.set_alpha_to_one is False
    assert json.loads((out / "class_labels.json").read_text()) == {"labels": list(CLASS_NAMES),
                                                                    "null_class": len(CLASS_NAMES)}

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(boot, "train_ddpm", no_training)
    assert boot.bootstrap_diffusion(tmp_path / "pipe", size=16, train_steps=3, batch_size=4, dataset_size=12) == out
    with pytest.raises(AssertionError, match="retrained"):  # other settings: trained again
        boot.bootstrap_diffusion(tmp_path / "pipe", size=16, train_steps=4, batch_size=4, dataset_size=12)


def test_areal_bootstrap_builds_the_diffusion_demo_model_where_asked(tmp_path, monkeypatch, capsys):
    import launch.diffusion_bootstrap as boot
    from launch.cli import main

    calls = []
    monkeypatch.setattr(boot, "bootstrap_diffusion", lambda out, seed: calls.append((str(out), seed)) or out)
    assert main(["bootstrap", "--kind", "diffusion", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert calls == [(str(tmp_path / "m"), 3)] and capsys.readouterr().out.strip() == str(tmp_path / "m")
