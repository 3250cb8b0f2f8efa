"""The ID-conditioned U-Net: shapes, conditioning paths, save/load round trip."""

import pytest
import torch

from id3pm.modeldir import load_model_dir, read_info, save_model_dir
from id3pm.models import IDConditionedUNet
from id3pm.models.unet import block_types

TINY = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=32, norm_num_groups=8,
            attention_resolutions=(8,), id_dim=5, dropout=0.0)


def test_attention_sits_at_the_configured_resolutions():
    down, up = block_types(64, 4, (16, 8))
    assert down == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
    assert up == ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]


def test_output_has_noise_and_variance_channels_and_uses_the_vector():
    torch.manual_seed(0)
    m = IDConditionedUNet(**TINY).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    y = torch.randn(2, 5)
    out = m(x, t, id_vector=y)
    assert out.shape == (2, 6, 16, 16)
    assert not torch.allclose(out, m(x, t, id_vector=y + 1))
    # the zero null condition is exactly "y replaced by the zero vector"
    torch.testing.assert_close(m(x, t, id_vector=y, drop_id=torch.tensor([True, True])), m(x, t, id_vector=torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="pass id_vector"):
        m(x, t)


def test_learned_null_condition_and_attribute_mask():
    torch.manual_seed(0)
    m = IDConditionedUNet(**{**TINY, "null_condition": "learned", "attr_dim": 3}).eval()
    x, t, y = torch.randn(1, 3, 16, 16), torch.tensor([10]), torch.randn(1, 5)
    with torch.no_grad():
        m.null_id_embedding.fill_(0.5)
    dropped = m(x, t, id_vector=y, drop_id=torch.tensor([True]))
    assert not torch.allclose(dropped, m(x, t, id_vector=torch.zeros(1, 5)))
    a = torch.tensor([[1.0, -2.0, 0.5]])
    unset = m(x, t, id_vector=y, attributes=a, attr_mask=torch.zeros(1, 3))
    torch.testing.assert_close(unset, m(x, t, id_vector=y, attributes=torch.zeros(1, 3), attr_mask=torch.zeros(1, 3)))
    assert not torch.allclose(unset, m(x, t, id_vector=y, attributes=a))


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    m = IDConditionedUNet(**{**TINY, "id_scale": 3.5}).eval()
    info = {"task": "base", "image_size": 16, "diffusion": {"schedule": "cosine", "num_timesteps": 1000},
            "encoder": {"name": "dlib"}, "id_dim": 5}
    save_model_dir(tmp_path / "m", m, info)
    loaded, info2 = load_model_dir(tmp_path / "m")
    assert info2["image_size"] == 16 and loaded.config.id_scale == 3.5
    assert list((tmp_path / "m" / "unet").glob("*.safetensors")) and not list((tmp_path / "m").rglob("*.bin"))
    for (k, a), (k2, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.randn(2, 5)
    assert torch.equal(m(x, t, id_vector=y), loaded(x, t, id_vector=y))


def test_large_models_are_saved_in_small_shards(tmp_path):
    m = IDConditionedUNet(**{**TINY, "block_out_channels": (64, 128)})
    save_model_dir(tmp_path / "m", m, {"task": "base"}, max_shard_size="1MB")
    shards = list((tmp_path / "m" / "unet").glob("*.safetensors"))
    assert len(shards) > 1 and all(s.stat().st_size < 2_000_000 for s in shards)
    loaded, _ = load_model_dir(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an id3pm model folder"):
        read_info(tmp_path)


def test_mid_block_attention_has_its_group_norm_as_in_adm():
    # diffusers leaves it out under scale-shift norm unless attn_norm_num_groups is given
    model = IDConditionedUNet(sample_size=16, block_out_channels=(32, 64), attention_resolutions=(8,),
                              attention_head_dim=32, norm_num_groups=8)
    attention = model.unet.mid_block.attentions[0]
    assert isinstance(attention.group_norm, torch.nn.GroupNorm) and attention.group_norm.num_groups == 8
    assert "unet.mid_block.attentions.0.group_norm.weight" in model.state_dict()
