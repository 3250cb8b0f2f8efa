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


def test_a_dropped_identity_becomes_exactly_the_learned_null_embedding():
    torch.manual_seed(0)
    m = IDConditionedUNet(**{**TINY, "null_condition": "learned"}).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 600])
    y1, y2 = torch.randn(2, 5), torch.randn(2, 5)
    with torch.no_grad():
        m.null_id_embedding.copy_(torch.randn_like(m.null_id_embedding))
        drop = torch.tensor([True, False])
        out = m(x, t, id_vector=y1, drop_id=drop)
        # computed independently: the body with the embedding we expect in each row
        null = m.null_id_embedding.expand(2, -1)
        expected_dropped = m.unet(x, t, class_labels=null).sample
        expected_kept = m.unet(x, t, class_labels=m.id_embedding(y1 * m.config.id_scale)).sample
        other = m(x, t, id_vector=y2, drop_id=drop)
    torch.testing.assert_close(out[0], expected_dropped[0])
    torch.testing.assert_close(out[1], expected_kept[1])
    torch.testing.assert_close(other[0], out[0])  # a dropped row knows nothing of its vector
    assert not torch.allclose(other[1], out[1])
    # "zero" null: the dropped vector reaches the Linear as zeros, i.e. its bias alone
    z = IDConditionedUNet(**TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(z(x, t, id_vector=y1, drop_id=torch.tensor([True, True])),
                                   z.unet(x, t, class_labels=z.id_embedding.bias.expand(2, -1)).sample)


def test_the_attribute_mask():
    torch.manual_seed(0)
    m = IDConditionedUNet(**{**TINY, "null_condition": "learned", "attr_dim": 3}).eval()
    x, t, y = torch.randn(1, 3, 16, 16), torch.tensor([10]), torch.randn(1, 5)
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


def test_coordinate_canvas_tells_every_pixel_apart():
    from id3pm.models.unet import coordinate_canvas

    c = coordinate_canvas(2, 5, "cpu")
    assert c.shape == (2, 3, 5, 5)
    torch.testing.assert_close(c[0, :, 0, 0], torch.tensor([-1.0, -1.0, -1.0]))  # top left: u = v = -1
    torch.testing.assert_close(c[0, :, 2, 2], torch.tensor([0.0, 0.0, 1.0]))  # centre
    torch.testing.assert_close(c[0, :, 0, 4], torch.tensor([1.0, -1.0, -1.0]))  # top right
    pixels = c[0].reshape(3, -1).T
    assert len({tuple(p.tolist()) for p in pixels}) == 25
