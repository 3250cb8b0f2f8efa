"""The `faceres` encoder and the TF.js graph runner behind it: the runner against tfjs
itself (Node, tests/node), op semantics against references computed another way, and
identity separation on real faces (ORL)."""

import base64
import csv
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import missing_asset, shared_data
from scipy.stats import mannwhitneyu
from skimage import data as skdata

from id3pm.encoders import identity_distance, make_encoder
from id3pm.encoders.faceres import AGE, DESCRIPTOR, EMOTIONS, GENDER, EmotionModel, FaceresEncoder, default_models_dir
from id3pm.images import load_image
from id3pm.tfjs_graph import TfjsGraph, decode_weights

NODE_DIR = Path(__file__).resolve().parent / "node"
TOLERANCE = 1e-4  # runner vs tfjs, absolute, on every output


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The runner issues ~280 small ops per batch. With `make test` (2 xdist workers x 2
    threads on 2 cores) every op waits for a descheduled OpenMP thread: measured 13x
    slower (200 vs 16 ms/face) on a loaded machine. One thread per worker avoids it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers: the reference runner, and hand-made graph models ------------------------
def models_dir() -> Path:
    folder = default_models_dir()
    if not all((folder / f).is_file() for f in ("faceres.json", "faceres.bin", "emotion.json", "emotion.bin")):
        missing_asset(f"human's TF.js models are not in {folder}: run `make models` (scripts/fetch_human_models.sh)")
    return folder


def tfjs(model_json: Path, x: np.ndarray, outputs: list[str], tmp: Path) -> dict[str, np.ndarray]:
    """Run a graph model with @tensorflow/tfjs in Node (tests/node/tfjs_reference.mjs)."""
    node = shutil.which("node")
    if node is None:
        missing_asset("node is not installed: the tfjs reference cannot run")
    if not (NODE_DIR / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        missing_asset(f"@tensorflow/tfjs is not installed: run `npm install` in {NODE_DIR}")
    np.save(tmp / "x.npy", np.ascontiguousarray(x, dtype="<f4"))
    cmd = [node, str(NODE_DIR / "tfjs_reference.mjs"), "--model", str(model_json), "--input", str(tmp / "x.npy"),
           "--outputs", ",".join(outputs), "--out", str(tmp / "y.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"tfjs reference failed:\n{proc.stderr[-3000:]}"
    result = json.loads((tmp / "y.json").read_text())
    assert result["backend"] == "cpu"
    return {k: np.array(v["data"], np.float32).reshape(v["shape"]) for k, v in result["outputs"].items()}


def _attr(value):
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, int):
        return {"i": str(value)}
    if isinstance(value, float):
        return {"f": value}
    if isinstance(value, str):
        return {"type": value} if value.startswith("DT_") else {"s": base64.b64encode(value.encode()).decode()}
    if all(isinstance(v, str) for v in value):
        return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in value]}}
    return {"list": {"i": [str(v) for v in value]}}


def op(name, kind, *inputs, **attrs):
    return {"name": name, "op": kind, "input": list(inputs), "attr": {k: _attr(v) for k, v in attrs.items()}}


def write_graph(folder: Path, nodes: list[dict], weights: dict, shape: list[int], shards: int = 2) -> Path:
    """A converter-style model.json + .bin shards. weights: name -> array, or
    (array, "float16" | ("uint8", scale, min)) for a quantized one."""
    folder.mkdir(parents=True, exist_ok=True)
    specs, blob = [], b""
    for name, w in weights.items():
        arr, quant = (w if isinstance(w, tuple) else (w, None))
        dtype = "int32" if arr.dtype.kind in "iu" else "float32"
        spec = {"name": name, "shape": list(arr.shape), "dtype": dtype}
        if quant == "float16":
            blob += arr.astype(np.float16).tobytes()
            spec["quantization"] = {"dtype": "float16", "original_dtype": dtype}
        elif quant is not None:
            qdtype, scale, lo = quant
            q = np.round((arr - lo) / scale).astype(qdtype)
            blob += q.tobytes()
            spec["quantization"] = {"dtype": qdtype, "scale": scale, "min": lo, "original_dtype": dtype}
        else:
            blob += arr.astype(np.int32 if dtype == "int32" else np.float32).tobytes()
        specs.append(spec)
    cut = [len(blob) * i // shards for i in range(shards + 1)]  # shard borders fall inside weights
    paths = []
    for i in range(shards):
        paths.append(f"group1-shard{i + 1}of{shards}.bin")
        (folder / paths[-1]).write_bytes(blob[cut[i] : cut[i + 1]])
    def dims(shape):
        return {"dim": [{"size": str(d)} for d in shape]}

    consts = []
    for n, spec in zip(weights, specs):
        dt = "DT_INT32" if spec["dtype"] == "int32" else "DT_FLOAT"
        value = {"tensor": {"dtype": dt, "tensorShape": dims(spec["shape"])}}
        consts.append({"name": n, "op": "Const", "attr": {"dtype": {"type": dt}, "value": value}})
    placeholder = {"name": "x", "op": "Placeholder",
                   "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": dims(shape)}}}
    model = {"format": "graph-model", "generatedBy": "test", "convertedBy": "test",
             "modelTopology": {"node": [placeholder, *consts, *nodes], "library": {}, "versions": {"producer": 1}},
             "weightsManifest": [{"paths": paths, "weights": specs}]}
    (folder / "model.json").write_text(json.dumps(model))
    return folder / "model.json"


# -- independent numpy references ---------------------------------------------------------
def same_pads(size, k, stride, dil=1):
    """TF's SAME rule as documented: output ceil(size / stride), the extra pixel after."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dil * (k - 1) + 1 - size)
    return (total // 2, total - total // 2)


def np_conv(x, k, stride=(1, 1), dil=(1, 1), pads=((0, 0), (0, 0)), depthwise=False):
    """NHWC convolution as a sum over kernel taps of strided views (no torch)."""
    x = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    n, h, w, c = x.shape
    kh, kw = k.shape[:2]
    oh, ow = (h - dil[0] * (kh - 1) - 1) // stride[0] + 1, (w - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dil[0], j * dil[1]
            patch = x[:, y0 : y0 + (oh - 1) * stride[0] + 1 : stride[0], x0 : x0 + (ow - 1) * stride[1] + 1 : stride[1]]
            out = out + ((patch[..., None] * k[i, j]).reshape(n, oh, ow, -1) if depthwise else patch @ k[i, j])
    return out


def np_pool(x, k, stride, kind):
    """SAME pooling with NaN padding: nanmax/nanmean ignore it, as TF does."""
    pads = [same_pads(x.shape[1 + d], k, stride) for d in range(2)]
    xp = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)), constant_values=np.nan)
    oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    win = np.stack([xp[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
                    for i in range(k) for j in range(k)])
    return np.nanmax(win, 0) if kind == "max" else np.nanmean(win, 0)


# -- an "op zoo" graph: every op of faceres/emotion and the neighbours, odd sizes -------------
def zoo(rng):
    w = {
        "k_s2": (rng.normal(size=(4, 3, 3, 5)).astype(np.float32), "float16"),  # 4x3 kernel: asymmetric SAME
        "k_dil": rng.normal(size=(3, 3, 3, 2)).astype(np.float32),
        "k_dw": (rng.uniform(-1, 1, size=(3, 3, 3, 2)).astype(np.float32), ("uint8", 2 / 255, -1.0)),
        "k_valid": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
        "bias4": rng.normal(size=4).astype(np.float32),
        "bias6": rng.normal(size=6).astype(np.float32),
        "alpha4": rng.uniform(0.1, 0.5, size=4).astype(np.float32),
        "w_mm": rng.normal(size=(4, 3)).astype(np.float32),
        "axes12": np.array([1, 2], np.int32),
        "axis_last": np.array(-1, np.int32),
        "pads": np.array([[0, 0], [1, 2], [2, 0], [0, 0]], np.int32),
        "shape": np.array([-1, 12], np.int32),
        "two": np.array(2.0, np.float32),
        "six": np.array(6.0, np.float32),
    }
    s2, s1 = [1, 2, 2, 1], [1, 1, 1, 1]
    nodes = [
        op("conv_s2", "Conv2D", "x", "k_s2", strides=s2, padding="SAME", data_format="NHWC", dilations=s1),
        op("conv_dil", "Conv2D", "x", "k_dil", strides=s1, padding="SAME", dilations=[1, 2, 2, 1]),
        op("dw", "DepthwiseConv2dNative", "x", "k_dw", strides=s2, padding="SAME", dilations=s1),
        op("fused", "_FusedConv2D", "x", "k_valid", "bias4", strides=s2, padding="VALID", dilations=s1,
           fused_ops=["BiasAdd", "Relu"], num_args=1),
        op("prelu", "_FusedConv2D", "x", "k_valid", "bias4", "alpha4", strides=s1, padding="VALID", dilations=s1,
           fused_ops=["BiasAdd", "Prelu"], num_args=2),
        op("leaky", "_FusedConv2D", "x", "k_valid", "bias4", strides=s1, padding="SAME", dilations=s1,
           fused_ops=["BiasAdd", "LeakyRelu"], num_args=1, leakyrelu_alpha=0.125),
        op("fdw", "FusedDepthwiseConv2dNative", "x", "k_dw", "bias6", strides=s1, padding="SAME", dilations=s1,
           fused_ops=["BiasAdd", "Relu6"], num_args=1),
        op("bn", "Add", "dw", "bias6"),
        op("bn2", "Mul", "bn", "two"),
        op("bn3", "Maximum", "bn2", "bias6"),
        op("bias", "BiasAdd", "bn3", "bias6"),
        op("res", "AddV2", "bias", "dw"),
        op("relu", "Relu", "res"),
        op("maxpool", "MaxPool", "x", ksize=[1, 3, 3, 1], strides=s2, padding="SAME"),
        op("avgpool", "AvgPool", "x", ksize=[1, 3, 3, 1], strides=s2, padding="SAME"),
        op("mean", "Mean", "x", "axes12", keep_dims=True),
        op("squeeze", "Squeeze", "mean", squeeze_dims=[1, 2]),
        op("matmul", "_FusedMatMul", "squeeze", "w_mm", "bias4", transpose_a=False, transpose_b=True,
           fused_ops=["BiasAdd", "Relu"], num_args=1),
        op("softmax", "Softmax", "matmul"),
        op("gram", "MatMul", "matmul", "matmul", transpose_a=True, transpose_b=False),
        op("sigmoid", "Sigmoid", "matmul"),
        op("pad", "Pad", "x", "pads"),
        op("concat", "ConcatV2", "conv_dil", "x", "axis_last", N=2),
        op("clip", "Minimum", "conv_dil", "six"),
        op("relu6", "Relu6", "conv_dil"),
        op("arith", "RealDiv", "clip", "two"),
        op("arith2", "Sub", "arith", "relu6"),
        op("flat", "Reshape", "maxpool", "shape"),
        op("out", "Identity", "flat"),
    ]
    inner = ("clip", "relu6", "arith", "flat", "bn", "bn2", "bn3", "bias", "res")  # checked through later nodes
    outputs = [n["name"] for n in nodes if n["name"] not in inner]
    return nodes, w, outputs


def zoo_reference(x, w):
    k_dw = w["k_dw"][0]
    k_dw = np.round((k_dw + 1.0) / (2 / 255)) * (2 / 255) - 1.0  # what the uint8 quantization keeps
    k_s2 = w["k_s2"][0].astype(np.float16).astype(np.float64)
    h, wd = x.shape[1:3]
    ref = {
        "conv_s2": np_conv(x, k_s2, (2, 2), pads=(same_pads(h, 4, 2), same_pads(wd, 3, 2))),
        "conv_dil": np_conv(x, w["k_dil"], dil=(2, 2), pads=(same_pads(h, 3, 1, 2), same_pads(wd, 3, 1, 2))),
        "dw": np_conv(x, k_dw, (2, 2), pads=(same_pads(h, 3, 2), same_pads(wd, 3, 2)), depthwise=True),
        "fused": np.maximum(np_conv(x, w["k_valid"], (2, 2)) + w["bias4"], 0),
        "fdw": np.clip(np_conv(x, k_dw, pads=(same_pads(h, 3, 1), same_pads(wd, 3, 1)), depthwise=True) + w["bias6"],
                       0, 6),
        "maxpool": np_pool(x, 3, 2, "max"),
        "avgpool": np_pool(x, 3, 2, "mean"),
        "mean": x.mean(axis=(1, 2), keepdims=True),
        "pad": np.pad(x, [[0, 0], [1, 2], [2, 0], [0, 0]]),
    }
    pre = np_conv(x, w["k_valid"]) + w["bias4"]
    ref["prelu"] = np.where(pre >= 0, pre, pre * w["alpha4"])
    pre = np_conv(x, w["k_valid"], pads=(same_pads(h, 3, 1), same_pads(wd, 3, 1))) + w["bias4"]
    ref["leaky"] = np.where(pre >= 0, pre, pre * 0.125)
    ref["relu"] = np.maximum(np.maximum((ref["dw"] + w["bias6"]) * 2, w["bias6"]) + w["bias6"] + ref["dw"], 0)
    ref["squeeze"] = ref["mean"][:, 0, 0]
    ref["matmul"] = np.maximum(ref["squeeze"] @ w["w_mm"].T + w["bias4"], 0)
    e = np.exp(ref["matmul"] - ref["matmul"].max(1, keepdims=True))
    ref["softmax"] = e / e.sum(1, keepdims=True)
    ref["sigmoid"] = 1 / (1 + np.exp(-ref["matmul"]))
    ref["gram"] = ref["matmul"].T @ ref["matmul"]
    ref["concat"] = np.concatenate([ref["conv_dil"], x], -1)
    ref["arith2"] = np.minimum(ref["conv_dil"], 6) / 2 - np.clip(ref["conv_dil"], 0, 6)
    ref["out"] = ref["maxpool"].reshape(-1, 12)
    return ref


@pytest.fixture(scope="module")
def zoo_model(tmp_path_factory):
    rng = np.random.default_rng(0)
    nodes, w, outputs = zoo(rng)
    x = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)  # odd/even sizes: SAME padding differs per side
    path = write_graph(tmp_path_factory.mktemp("zoo"), nodes, w, [-1, 9, 8, 3])
    return path, x, w, outputs


# -- (b) op semantics ------------------------------------------------------------------------
def test_same_padding_puts_the_odd_pixel_after(tmp_path):
    # 5x5 input, 2x2 kernel of ones, stride 2: 3x3 output and ONE row/column of padding,
    # which TF puts at the bottom/right. Symmetric (torch-style) padding would move every sum.
    path = write_graph(tmp_path, [op("y", "Conv2D", "x", "k", strides=[1, 2, 2, 1], padding="SAME")],
                       {"k": np.ones((2, 2, 1, 1), np.float32)}, [1, 5, 5, 1], shards=1)
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    y = TfjsGraph(path).run({"x": x}, ["y"])["y"][0, :, :, 0]
    assert y.tolist() == [[12, 20, 13], [52, 60, 33], [41, 45, 24]]


def test_ops_match_numpy_references(zoo_model):
    path, x, w, outputs = zoo_model
    got = TfjsGraph(path).run({"x": x}, outputs)
    ref = zoo_reference(x.astype(np.float64), w)
    for name in outputs:
        assert got[name].shape == ref[name].shape, name
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_ops_match_tfjs(zoo_model, tmp_path):
    path, x, _, outputs = zoo_model
    ref = tfjs(path, x, outputs, tmp_path)
    got = TfjsGraph(path).run({"x": x}, outputs)
    for name in outputs:
        assert got[name].shape == ref[name].shape, name
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_quantized_weights_decode_as_tfjs_does(tmp_path):
    f16 = np.array([[0.1, -2.5, 65504.0], [1e-3, 0.0, -0.333]], np.float16)
    q8, q16, q8i = np.array([0, 7, 255], np.uint8), np.array([0, 1000, 65535], np.uint16), np.array([0, 3, 7], np.uint8)
    i32, f32 = np.array([-7, 2**30], np.int32), np.array([1.5, -0.25], np.float32)
    blob = b"".join(a.tobytes() for a in (f16, q8, q16, q8i, i32, f32))
    (tmp_path / "a.bin").write_bytes(blob[:5])  # the first shard ends inside a weight
    (tmp_path / "b.bin").write_bytes(blob[5:])
    f16q = {"dtype": "float16", "original_dtype": "float32"}
    manifest = [{"paths": ["a.bin", "b.bin"], "weights": [
        {"name": "f16", "shape": [2, 3], "dtype": "float32", "quantization": f16q},
        {"name": "q8", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "q16", "shape": [3], "dtype": "float32",
         "quantization": {"dtype": "uint16", "scale": 1e-3, "min": 2.0}},
        {"name": "q8i", "shape": [3], "dtype": "int32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "i32", "shape": [2], "dtype": "int32"},
        {"name": "f32", "shape": [1, 2], "dtype": "float32"},
    ]}]
    w = {k: v.numpy() for k, v in decode_weights(manifest, tmp_path).items()}
    assert w["f16"].dtype == np.float32 and np.array_equal(w["f16"], f16.astype(np.float32))
    assert w["q8"].tolist() == [-1.0, 2.5, 126.5]
    np.testing.assert_array_equal(w["q16"], np.float32(np.array([0, 1000, 65535]) * 1e-3 + 2.0))
    assert w["q8i"].dtype == np.int32 and w["q8i"].tolist() == [-1, 1, 3]  # 0.5, 2.5: rounded up, as JS Math.round
    assert w["i32"].tolist() == [-7, 2**30] and w["f32"].tolist() == [[1.5, -0.25]]


def test_missing_files_and_unknown_ops_are_named(tmp_path):
    path = write_graph(tmp_path / "m", [op("y", "Erf", "x")], {}, [1, 2], shards=1)
    with pytest.raises(NotImplementedError, match=r"op Erf \(node y\)"):
        TfjsGraph(path).run({"x": np.zeros((1, 2))})
    (tmp_path / "m" / "group1-shard1of1.bin").unlink()
    with pytest.raises(FileNotFoundError, match="group1-shard1of1.bin"):
        TfjsGraph(path)
    with pytest.raises(FileNotFoundError, match="make models"):
        FaceresEncoder(models_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"expected shape \[1, 2\]"):
        TfjsGraph(write_graph(tmp_path / "n", [op("y", "Relu", "x")], {}, [1, 2])).run({"x": np.zeros((1, 3))})


# -- (a) the real models: runner vs tfjs on real faces -----------------------------------------
@pytest.fixture(scope="module")
def encoder():
    return FaceresEncoder(models_dir=models_dir())


@pytest.fixture(scope="module")
def face_crops(encoder):
    """The astronaut's face cut as the encoder cuts it, mirrored, shifted, and a tight crop."""
    photo = skdata.astronaut()
    crop, _ = encoder.crop_from_photo(photo, "astronaut")
    shifted = cv2.warpAffine(crop, np.float32([[1, 0, 14], [0, 1, -9]]), (224, 224), borderMode=cv2.BORDER_REPLICATE)
    tight = cv2.resize(crop[40:184, 40:184], (224, 224), interpolation=cv2.INTER_LINEAR)
    return [crop, np.ascontiguousarray(crop[:, ::-1]), shifted, tight]


def test_faceres_matches_tfjs_on_faces(encoder, face_crops, tmp_path):
    outputs = [DESCRIPTOR, GENDER, AGE]
    ref = tfjs(encoder.models_dir / "faceres.json", encoder.prepare(face_crops), outputs, tmp_path)
    got = encoder.describe(face_crops)
    for name, key in zip(outputs, ("descriptor", "male", "age_probs")):
        diff = np.abs(got[key].reshape(ref[name].shape) - ref[name]).max()
        assert diff < TOLERANCE, f"{name}: max |runner - tfjs| = {diff:.2e}"
    assert np.abs(got["descriptor"]).max() > 1  # a real, non-degenerate descriptor was compared
    assert (got["male"] < 0.5).all()  # Eileen Collins, as human would label her


def test_emotion_matches_tfjs_on_faces(face_crops, tmp_path):
    model = EmotionModel(models_dir())
    ref = tfjs(model.models_dir / "emotion.json", model.prepare(face_crops), ["Identity"], tmp_path)["Identity"]
    got = model.predict(face_crops)
    assert got.shape == (4, len(EMOTIONS)) and np.allclose(got.sum(1), 1, atol=1e-5)
    assert np.abs(got - ref).max() < TOLERANCE, f"emotion: max |runner - tfjs| = {np.abs(got - ref).max():.2e}"
    assert [EMOTIONS[i] for i in got.argmax(1)] == ["happy"] * 4  # she smiles


def test_encoder_contract(encoder, face_crops):
    enc = make_encoder("faceres")
    assert (enc.name, enc.dim, enc.distance, enc.crop.size) == ("faceres", 1024, "cosine", 224)
    assert enc.spec() == {"name": "faceres"}
    res = enc.encode([skdata.astronaut(), np.full((120, 120, 3), 128, np.uint8)], keys=["astro", "blank"])
    assert res.errors[0] is None and res.errors[1] == "blank: no face found"
    v = res.vectors[0]
    assert v.shape == (1024,) and v.dtype == np.float32 and np.isfinite(v).all()
    # the same face mirrored or shifted stays close; a different batch split gives the same vectors
    vecs = encoder.encode_crops(face_crops)
    assert (identity_distance(vecs[0], vecs[1:3], "cosine") < 0.1).all()
    assert np.allclose(encoder.encode_crops(face_crops[:1])[0], vecs[0], atol=1e-5)


# -- (c) identity separation on real faces -------------------------------------------------------
@pytest.mark.shared_data
def test_faceres_separates_people_on_orl(encoder):
    root = shared_data("orl")
    rows = list(csv.DictReader(open(root / "pairs.csv")))[:120]
    paths = sorted({r["path_a"] for r in rows} | {r["path_b"] for r in rows})
    res = encoder.encode([load_image(root / p) for p in paths], keys=paths)
    vec = dict(zip(paths, res.vectors))
    same, diff = [], []
    for r in rows:
        d = encoder.identity_distance(vec[r["path_a"]], vec[r["path_b"]])
        if np.isfinite(d):
            (same if r["same"] == "1" else diff).append(d)
    assert len(same) + len(diff) >= 0.95 * len(rows)
    auc = mannwhitneyu(diff, same).statistic / (len(same) * len(diff))
    assert auc > 0.9, f"same/different AUC {auc:.3f}"
