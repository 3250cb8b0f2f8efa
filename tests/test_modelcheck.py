"""Hostile and corrupt model folders (id3pm.modelcheck): each is refused in one line that
names the file, before anything is allocated or unpickled; a clean folder loads."""

import json
import os
import pickle
import shutil

import pytest
import torch

from id3pm.modelcheck import ModelFolderError
from id3pm.modeldir import load_model_dir, save_model_dir
from id3pm.models import IDConditionedUNet

INFO = {"task": "base", "image_size": 16, "encoder": {"name": "dlib"}, "distance": "euclidean", "id_dim": 8}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    torch.manual_seed(0)
    net = IDConditionedUNet(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=16,
                            norm_num_groups=4, attention_resolutions=(8,), id_dim=8, dropout=0.0)
    return save_model_dir(tmp_path_factory.mktemp("m") / "model", net, INFO, max_shard_size="40KB")


@pytest.fixture
def folder(clean, tmp_path):
    return shutil.copytree(clean, tmp_path / "model")


def shards(folder):
    return sorted((folder / "unet").glob("*.safetensors"))


def refused(folder, *words):
    with pytest.raises(ModelFolderError) as e:
        load_model_dir(folder)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_a_clean_folder_loads_and_records_its_hashes(clean):
    model, info = load_model_dir(clean)
    assert len(shards(clean)) > 1 and set(info["sha256"]) == {f"unet/{p.name}" for p in shards(clean)}
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_truncated_shard_is_refused(folder):
    shard = shards(folder)[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    refused(folder, shard.name, "truncated")


def test_a_flipped_bit_in_tensor_data_is_refused_by_its_hash(folder):
    shard = shards(folder)[-1]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor: sizes and shapes still agree
    shard.write_bytes(bytes(data))
    refused(folder, shard.name, "SHA-256")


def test_a_flipped_bit_in_the_header_is_refused(folder):
    shard = shards(folder)[0]
    data = bytearray(shard.read_bytes())
    data[3] ^= 0x01  # the header length: 2^24 bytes more than the file has
    shard.write_bytes(bytes(data))
    refused(folder, shard.name, "not a safetensors file")


def test_a_pickle_where_weights_belong_is_never_unpickled(folder, tmp_path):
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for shard in shards(folder):
        shard.write_bytes(pickle.dumps({"weight": Trap()}))
    refused(folder, shards(folder)[0].name, "safetensors")
    for shard in shards(folder):  # a pickle under the name diffusers falls back to
        shard.unlink()
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    refused(folder, "no safetensors weights")
    assert not marker.exists()


def test_a_tensor_renamed_by_a_flipped_bit_is_refused_naming_its_shard(folder):
    shard = shards(folder)[1]
    data = bytearray(shard.read_bytes())
    header = data[8 : 8 + int.from_bytes(data[:8], "little")]
    at = 8 + header.index(b"weight")  # a name inside the JSON header, same length after the flip
    data[at] ^= 0x01  # "weight" -> "veight": the header stays valid, the name no longer exists
    shard.write_bytes(bytes(data))
    refused(folder, shard.name, "veight", "not in the network")


@pytest.mark.parametrize("change, words", [
    ({"block_out_channels": [16, 10**9]}, ["block_out_channels", "beyond any sane"]),
    ({"layers_per_block": 10**7}, ["layers_per_block", "beyond any sane"]),
    ({"block_out_channels": [16] * 1000}, ["block_out_channels", "entries"]),
    ({"block_out_channels": [16, 48]}, ["config.json says", ".safetensors"]),
    ({"sample_size": {"nested": 1}}, ["sample_size", "unexpected value"]),
])
def test_a_config_of_absurd_or_wrong_sizes_is_refused_before_building(folder, change, words):
    path = folder / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    refused(folder, "config.json", *words)


def test_a_wrong_format_string_is_refused(folder):
    path = folder / "id3pm.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": "something-else/9"}))
    with pytest.raises(ValueError, match="unsupported model format"):
        load_model_dir(folder)


def test_symlinks_and_shard_names_that_leave_the_folder_are_refused(folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    config = folder / "unet" / "config.json"
    shutil.copy(config, outside / "config.json")
    config.unlink()
    config.symlink_to(outside / "config.json")
    refused(folder, "config.json", "outside the model folder")
    config.unlink()
    shutil.copy(outside / "config.json", config)
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    table = json.loads(index.read_text())
    first = next(iter(table["weight_map"]))
    table["weight_map"][first] = "../../outside/x.safetensors"
    index.write_text(json.dumps(table))
    refused(folder, "index", "not a file of")


def test_random_corruptions_of_weight_files_are_all_refused(tmp_path):
    from faults import model_folder_corruptions

    row = model_folder_corruptions(tmp_path, cases=40)
    assert row.lost == 0 and row.survived == row.tried == 40, row
