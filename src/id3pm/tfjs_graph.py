"""Run a TensorFlow.js *graph model* (model.json + .bin shards) in PyTorch.

    graph = TfjsGraph(folder / "faceres.json")
    out = graph.run({"input_1": batch_nhwc}, outputs=["global_pooling/Mean"])

Deliberately small and general: it reads the converter's JSON (a TF GraphDef as JSON
plus a weights manifest), decodes the weights as tfjs does (float32/int32, and the
converter's uint8/uint16/float16 quantization), and evaluates the nodes the requested
outputs depend on, in topological order, with TF semantics (NHWC, TF's SAME padding,
the grappler-fused `_Fused*` ops). It never downloads anything: the files must be in
the folder. Ops it does not know raise NotImplementedError naming the op and the node.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# numpy types of the dtypes a manifest stores weights in (possibly quantized), and loads them as.
_STORED = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16,
           "float16": np.float16, "bool": np.bool_}
_TORCH = {"float32": torch.float32, "int32": torch.int32, "bool": torch.bool}
_ACTIVATIONS = {  # the activations grappler fuses into _FusedConv2D/_FusedMatMul (and their plain ops)
    "Relu": torch.relu, "Relu6": lambda x: x.clamp(0.0, 6.0), "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh, "Elu": F.elu,
}


def decode_weights(manifest: list[dict], folder: Path) -> dict[str, torch.Tensor]:
    """Weights by name from a tfjs weightsManifest. Each group's shards are one byte
    stream split into consecutive weights; quantized ones are dequantized as tfjs does
    (uint8/uint16: q * scale + min, rounded for int32; float16: widened)."""
    weights = {}
    for group in manifest:
        blobs = []
        for p in group["paths"]:
            f = folder / p
            if not f.is_file():
                raise FileNotFoundError(f"TF.js weight shard {f} is missing (listed in the model's weightsManifest)")
            blobs.append(f.read_bytes())
        data, offset = b"".join(blobs), 0
        for spec in group["weights"]:
            quant = spec.get("quantization") or {}
            dtype = spec["dtype"]
            stored = quant.get("dtype", dtype)
            if stored not in _STORED or dtype not in _TORCH:
                raise NotImplementedError(f"weight {spec['name']}: dtype {dtype} stored as {stored} is not supported")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            nbytes = count * np.dtype(_STORED[stored]).itemsize
            if offset + nbytes > len(data):
                raise ValueError(f"weight {spec['name']}: the shards {group['paths']} are too short")
            raw = np.frombuffer(data, _STORED[stored], count, offset)
            offset += nbytes
            if stored in ("uint8", "uint16"):
                values = raw.astype(np.float64) * quant["scale"] + quant["min"]
                values = np.floor(values + 0.5) if dtype == "int32" else values  # JS Math.round
            else:
                values = raw
            array = np.asarray(values).astype(_STORED[dtype]).reshape(spec["shape"])
            weights[spec["name"]] = torch.from_numpy(array.copy())
    return weights


def _attr(node: dict, key: str, default=None):
    """A node attribute as a Python value (strings are base64 in the JSON)."""
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "list" in a:
        lst = a["list"]
        if "s" in lst:
            return [base64.b64decode(s).decode() for s in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return [int(v) for v in lst.get("i", [])]
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    return a.get("type", a)


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF SAME padding of one spatial dim: the output is ceil(size / stride) and the odd
    pixel of padding goes AFTER (bottom/right), which torch's symmetric padding cannot do."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class TfjsGraph:
    def __init__(self, model_json: str | Path):
        path = Path(model_json)
        if not path.is_file():
            raise FileNotFoundError(f"TF.js graph model {path} is missing")
        spec = json.loads(path.read_text())
        if spec.get("format") not in (None, "graph-model") or "node" not in spec.get("modelTopology", {}):
            raise ValueError(f"{path} is not a TF.js graph model (format {spec.get('format')!r})")
        self.path = path
        self.nodes = {n["name"]: n for n in spec["modelTopology"]["node"]}
        self.weights = decode_weights(spec.get("weightsManifest", []), path.parent)
        # Placeholder shapes, -1 where any size goes (the batch).
        self.inputs = {
            n: [int(d.get("size", -1)) for d in _attr(p, "shape", {}).get("shape", {}).get("dim", [])]
            for n, p in self.nodes.items() if p["op"] == "Placeholder"
        }
        sig = (spec.get("signature") or spec.get("userDefinedMetadata", {}).get("signature") or {}).get("outputs", {})
        consumed = {i.split(":")[0].lstrip("^") for d in self.nodes.values() for i in d.get("input", [])}
        self.outputs = [k.split(":")[0] for k in sig] or [n for n in self.nodes if n not in consumed]
        self._cache: dict[str, torch.Tensor] = {}  # constant conv kernels in torch layout, by node

    # -- evaluation ------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Evaluate `outputs` (default: the model's signature outputs) for the fed
        placeholders; names may carry TF's ':0' suffix."""
        outputs = list(outputs or self.outputs)
        values: dict[str, torch.Tensor] = {}
        for name, array in feeds.items():
            name = name.split(":")[0]
            if self.nodes.get(name, {}).get("op") != "Placeholder":
                raise KeyError(f"{self.path.name} has no input {name!r}; inputs: {sorted(self.inputs)}")
            values[name] = self._feed(name, array)
        keep = set(values) | {o.split(":")[0] for o in outputs}
        order = self._order(sorted(keep - set(values)), values)
        # Drop each intermediate once its last consumer ran: a batch of 32 faces would
        # otherwise hold every activation of the network (gigabytes) until the end.
        pending: dict[str, int] = {}
        for name in order:
            for r in self._refs(name):
                pending[r] = pending.get(r, 0) + 1
        with torch.no_grad():
            for name in order:
                values[name] = self._eval(self.nodes[name], values)
                for r in self._refs(name):
                    pending[r] -= 1
                    if pending[r] == 0 and r not in keep:
                        del values[r]
        # Copies: an output may be a weight or a view of one, which callers must not alter.
        return {o: values[o.split(":")[0]].numpy().copy() for o in outputs}

    def _feed(self, name: str, array) -> torch.Tensor:
        integer = _attr(self.nodes[name], "dtype") == "DT_INT32"
        x = torch.as_tensor(np.ascontiguousarray(array, dtype=np.int32 if integer else np.float32))
        dims = self.inputs[name]
        if dims and (x.ndim != len(dims) or any(d not in (-1, s) for d, s in zip(dims, x.shape))):
            raise ValueError(f"input {name}: expected shape {dims} (-1: any), got {tuple(x.shape)}")
        return x

    def _refs(self, name: str) -> list[str]:
        """Names of the nodes whose outputs feed `name` (control dependencies carry no data)."""
        return [i.split(":")[0] for i in self.nodes[name].get("input", []) if not i.startswith("^")]

    def _order(self, targets: list[str], known: dict) -> list[str]:
        """Nodes to evaluate, dependencies first (iterative DFS: graphs can be deep)."""
        order, done, stack = [], set(known), [(t, False) for t in reversed(targets)]
        while stack:
            name, expanded = stack.pop()
            if name in done:
                continue
            if name not in self.nodes:
                raise KeyError(f"{self.path.name} has no node {name!r}")
            if expanded:
                done.add(name)
                order.append(name)
                continue
            if self.nodes[name]["op"] == "Placeholder":
                raise ValueError(f"input {name!r} of {self.path.name} was not fed")
            stack.append((name, True))
            stack.extend((r, False) for r in reversed(self._refs(name)))
        return order

    def _eval(self, node: dict, values: dict) -> torch.Tensor:
        op, name = node["op"], node["name"]
        refs = [i for i in node.get("input", []) if not i.startswith("^")]
        for r in refs:
            if ":" in r and not r.endswith(":0"):
                raise NotImplementedError(f"node {name}: multi-output inputs ({r}) are not supported")
        args = [values[r.split(":")[0]] for r in refs]
        if op == "Const":
            if name not in self.weights:
                raise ValueError(f"Const node {name} has no value in the weights manifest")
            return self.weights[name]
        if op in ("Identity", "StopGradient", "Snapshot"):
            return args[0]
        binary = {"Add": torch.add, "AddV2": torch.add, "Sub": torch.sub, "Mul": torch.mul, "RealDiv": torch.div,
                  "Minimum": torch.minimum, "Maximum": torch.maximum}
        if op in binary:  # constants are float32 like the activations, so no type promotion surprises
            return binary[op](args[0], args[1])
        if op in _ACTIVATIONS:
            return _ACTIVATIONS[op](args[0])
        if op == "Softmax":
            return torch.softmax(args[0], dim=-1)
        if op == "BiasAdd":
            return _bias(args[0], args[1], _attr(node, "data_format", "NHWC"))
        if op in ("Mean", "Sum", "Max"):
            axes = [int(a) for a in args[1].reshape(-1).tolist()]
            axes = [a % args[0].ndim for a in axes]
            keep = bool(_attr(node, "keep_dims", False))
            if op == "Max":
                return torch.amax(args[0], dim=axes, keepdim=keep)
            return (torch.mean if op == "Mean" else torch.sum)(args[0], dim=axes, keepdim=keep)
        if op == "Reshape":
            return args[0].reshape([int(s) for s in args[1].tolist()])
        if op == "Squeeze":
            shape = args[0].shape
            dims = {d % len(shape) for d in _attr(node, "squeeze_dims", [])}
            dims = dims or {i for i, s in enumerate(shape) if s == 1}
            return args[0].reshape([s for i, s in enumerate(shape) if i not in dims])
        if op == "ConcatV2":
            return torch.cat(args[:-1], dim=int(args[-1]))
        if op in ("Pad", "PadV2"):  # paddings: [ndim, 2] (before, after); F.pad lists the last dim first
            pads = [int(p) for p in args[1].flip(0).reshape(-1).tolist()]
            return F.pad(args[0], pads, value=float(args[2]) if op == "PadV2" else 0.0)
        if op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            constant = self.nodes[refs[1].split(":")[0]]["op"] == "Const"
            return _fuse(node, self._conv(node, args[0], args[1], constant), args[2:])
        if op in ("MatMul", "_FusedMatMul"):
            a = args[0].T if _attr(node, "transpose_a", False) else args[0]
            b = args[1].T if _attr(node, "transpose_b", False) else args[1]
            return _fuse(node, a @ b, args[2:])
        if op in ("MaxPool", "AvgPool"):
            return self._pool(node, args[0])
        raise NotImplementedError(f"{self.path.name}: op {op} (node {name}) is not supported by TfjsGraph")

    # -- convolutions and pooling, done in NCHW views of the NHWC data -------------------
    def _conv(self, node: dict, x: torch.Tensor, kernel: torch.Tensor, constant: bool) -> torch.Tensor:
        nchw = _attr(node, "data_format", "NHWC") == "NCHW"
        strides, dil = _hw(node, "strides", nchw), _hw(node, "dilations", nchw)
        depthwise = "Depthwise" in node["op"]
        w = self._cache.get(node["name"])
        if w is None:  # TF [kh, kw, in, out|mult] -> torch [out, in/groups, kh, kw]
            kh, kw, cin, cout = kernel.shape
            w = kernel.permute(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw) if depthwise else kernel.permute(3, 2, 0, 1)
            w = w.contiguous()
            if constant:
                self._cache[node["name"]] = w
        # permute() of NHWC data is a channels_last NCHW view: no copy, and conv keeps that layout.
        x = x if nchw else x.permute(0, 3, 1, 2)
        x = _pad_spatial(node, x, w.shape[2:], strides, dil, 0.0)
        groups = x.shape[1] if depthwise else x.shape[1] // w.shape[1]
        y = F.conv2d(x, w, stride=strides, dilation=dil, groups=groups)
        return y if nchw else y.permute(0, 2, 3, 1)

    def _pool(self, node: dict, x: torch.Tensor) -> torch.Tensor:
        nchw = _attr(node, "data_format", "NHWC") == "NCHW"
        k, strides = _hw(node, "ksize", nchw), _hw(node, "strides", nchw)
        x = x if nchw else x.permute(0, 3, 1, 2)
        if node["op"] == "MaxPool":  # padded cells must never win the max
            y = F.max_pool2d(_pad_spatial(node, x, k, strides, (1, 1), float("-inf")), k, strides)
        else:  # TF's average counts only real pixels, also where SAME padding is asymmetric
            total = F.avg_pool2d(_pad_spatial(node, x, k, strides, (1, 1), 0.0), k, strides)
            ones = torch.ones_like(x[:1, :1])
            y = total / F.avg_pool2d(_pad_spatial(node, ones, k, strides, (1, 1), 0.0), k, strides)
        return y if nchw else y.permute(0, 2, 3, 1)


def _hw(node: dict, key: str, nchw: bool) -> tuple[int, int]:
    v = _attr(node, key) or [1, 1, 1, 1]
    return (v[2], v[3]) if nchw else (v[1], v[2])


def _pad_spatial(node, x, k, strides, dil, value) -> torch.Tensor:
    """Explicit padding of an NCHW tensor per the node's SAME/VALID/EXPLICIT padding."""
    padding = _attr(node, "padding", "VALID")
    if padding == "VALID":
        return x
    if padding == "SAME":
        (t, b), (l, r) = (_same_pads(x.shape[d], k[i], strides[i], dil[i]) for i, d in enumerate((2, 3)))
    elif padding == "EXPLICIT":  # 8 numbers: (before, after) per dim in data_format order
        p = _attr(node, "explicit_paddings")
        hw = (4, 6) if _attr(node, "data_format", "NHWC") == "NCHW" else (2, 4)
        (t, b), (l, r) = p[hw[0]: hw[0] + 2], p[hw[1]: hw[1] + 2]
    else:
        raise NotImplementedError(f"node {node['name']}: padding {padding!r} is not supported")
    return F.pad(x, (l, r, t, b), value=value) if (t, b, l, r) != (0, 0, 0, 0) else x


def _bias(x: torch.Tensor, bias: torch.Tensor, data_format: str = "NHWC") -> torch.Tensor:
    return x + (bias.reshape(-1, *[1] * (x.ndim - 2)) if data_format == "NCHW" and x.ndim > 2 else bias)


def _fuse(node: dict, y: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
    """Apply a grappler-fused op chain (`fused_ops`, e.g. BiasAdd then Relu) whose
    operands are the node's inputs after the first two."""
    for op in _attr(node, "fused_ops", []) or []:
        if op == "BiasAdd":
            y = _bias(y, extra.pop(0), _attr(node, "data_format", "NHWC"))
        elif op in _ACTIVATIONS:
            y = _ACTIVATIONS[op](y)
        elif op == "Prelu":  # per-channel slopes, laid out like a bias
            alpha = extra.pop(0)
            if _attr(node, "data_format", "NHWC") == "NCHW" and y.ndim > 2:
                alpha = alpha.reshape(-1, *[1] * (y.ndim - 2))
            y = torch.where(y >= 0, y, y * alpha)
        elif op == "LeakyRelu":
            y = F.leaky_relu(y, _attr(node, "leakyrelu_alpha", 0.2))
        else:
            raise NotImplementedError(f"node {node['name']} ({node['op']}): fused op {op} is not supported")
    return y

