"""Image rewards: JPEG (in)compressibility as in Black et al., a local aesthetic scorer, user rewards by path."""

import io

import numpy as np
import pytest

from rollouts.image_rewards import (AestheticScore, ImageReward, JpegCompressibility, JpegIncompressibility,
                                    jpeg_size_kb, make_image_reward)

FLAT = np.full((32, 32, 3), 120, dtype=np.uint8)
NOISY = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def brightness(image, prompt):
    return float(image.mean())


def test_flat_images_compress_better_than_noise():
    assert JpegCompressibility()(FLAT, "p") > JpegCompressibility()(NOISY, "p")
    assert JpegIncompressibility()(NOISY, "p") == -JpegCompressibility()(NOISY, "p")


def test_compressibility_is_minus_the_q95_jpeg_size_in_kb():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(NOISY).save(buf, format="JPEG", quality=95)
    assert JpegCompressibility()(NOISY, "p") == -len(buf.getvalue()) / 1000 == -jpeg_size_kb(NOISY)


@pytest.mark.parametrize("bad", [FLAT.astype(np.float32), FLAT[..., :1], FLAT[0], [[1, 2, 3]]])
def test_anything_but_a_uint8_rgb_array_is_refused(bad):
    with pytest.raises(ValueError, match="uint8"):
        JpegCompressibility()(bad, "p")


def test_rewards_are_chosen_by_name_or_import_path():
    assert isinstance(make_image_reward("jpeg_compressibility"), JpegCompressibility)
    user = make_image_reward("tests.unit.test_image_rewards:brightness")
    assert isinstance(user, ImageReward) and user(FLAT, "p") == 120.0
    with pytest.raises(ValueError, match="task.reward"):
        make_image_reward("beauty")
    with pytest.raises(ValueError, match="cannot be imported"):
        make_image_reward("tests.unit.test_image_rewards:missing")
    with pytest.raises(ValueError, match="task.reward_model_path"):
        make_image_reward("aesthetic")


@pytest.fixture(scope="module")
def aesthetic_dir(tmp_path_factory):
    """A tiny random CLIP and a 16 -> 8 -> 1 linear head, saved as a user would have them."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("aesthetic")
    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "vocab_size": 50},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    save_file({"layers.0.weight": torch.randn(8, 16), "layers.0.bias": torch.randn(8),
               "layers.1.weight": torch.randn(1, 8), "layers.1.bias": torch.randn(1)},
              path / "aesthetic_head.safetensors")
    return path


def test_aesthetic_score_is_the_head_over_the_normalised_clip_embedding(aesthetic_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPModel

    score = make_image_reward("aesthetic", str(aesthetic_dir))(NOISY, "p")
    clip, processor = CLIPModel.from_pretrained(aesthetic_dir), CLIPImageProcessor.from_pretrained(aesthetic_dir)
    head = load_file(aesthetic_dir / "aesthetic_head.safetensors")
    with torch.no_grad():
        emb = clip.get_image_features(pixel_values=processor(images=NOISY, return_tensors="pt").pixel_values)
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        x = emb / emb.norm(dim=-1, keepdim=True)
        x = (x @ head["layers.0.weight"].T + head["layers.0.bias"]) @ head["layers.1.weight"].T + head["layers.1.bias"]
    assert np.isfinite(score) and score == pytest.approx(float(x), abs=1e-5)


def test_aesthetic_scorer_files_that_do_not_fit_are_named(aesthetic_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="task.reward_model_path"):
        AestheticScore(str(tmp_path))(FLAT, "p")
    shutil.copytree(aesthetic_dir, tmp_path / "wide", dirs_exist_ok=True)
    save_file({"layers.0.weight": torch.randn(1, 768), "layers.0.bias": torch.randn(1)},
              tmp_path / "wide" / "aesthetic_head.safetensors")
    with pytest.raises(ValueError, match="projection_dim"):
        AestheticScore(str(tmp_path / "wide"))(FLAT, "p")


def test_rewards_can_be_sent_to_a_reward_process(aesthetic_dir):
    """Rewards run in spawned processes (rollouts.reward_pool), so they travel pickled; a loaded scorer model
    stays behind and loads again on the other side."""
    import pickle

    scorer = make_image_reward("aesthetic", str(aesthetic_dir))
    score = scorer(NOISY, "p")
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy._parts is None and copy(NOISY, "p") == pytest.approx(score, abs=1e-6)
    user = pickle.loads(pickle.dumps(make_image_reward("tests.unit.test_image_rewards:brightness")))
    assert user(FLAT, "p") == 120.0
