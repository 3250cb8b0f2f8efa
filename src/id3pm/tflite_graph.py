"""Run a float32 TensorFlow Lite model (a .tflite flatbuffer) in PyTorch.

    graph = TfliteGraph("MobileFaceNet.tflite")
    out = graph.run(batch_nhwc)            # {output tensor name: array}

The sibling of `id3pm.tfjs_graph.TfjsGraph` for .tflite files: it parses the flatbuffer
with the `tflite` package (pip install tflite; pure Python), keeps the weights as torch
tensors and evaluates the operators in the order the file lists them (TFLite stores them
topologically sorted), with TFLite semantics: NHWC tensors, TF's SAME padding, fused
activations. Only float32 models and the operators in `OPS` are supported (what
MobileFaceNet needs, and a few trivial ones); anything else raises NotImplementedError
naming the operator. The batch dimension is free: a file built for batch 2 runs any
batch (RESHAPE keeps the runtime batch where the file's target shape names the file's
batch). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "SUB", "MUL", "RELU", "RELU6", "ABS", "RESHAPE")


def _tflite():
    try:
        import tflite
    except ImportError as e:  # an optional extra: pip install "id3pm[tflite]"
        raise ImportError("reading .tflite models needs the `tflite` package: pip install tflite==2.18.0 "
                          "(or the project's extra: pip install -e '.[tflite]')") from e
    return tflite


def _enum_names(enum) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF SAME padding of one spatial dim: the output is ceil(size / stride), and the odd
    pixel of padding goes after (bottom/right), which torch's symmetric padding cannot do."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (k - 1) + 1 - size)
    return total // 2, total - total // 2


class TfliteGraph:
    def __init__(self, path: str | Path):
        tfl = _tflite()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TFLite model {self.path} is missing")
        buf = self.path.read_bytes()
        model = tfl.Model.GetRootAsModel(buf, 0)
        if model.SubgraphsLength() != 1:
            raise NotImplementedError(f"{self.path}: {model.SubgraphsLength()} subgraphs; only one is supported")
        g = model.Subgraphs(0)
        op_names, type_names = _enum_names(tfl.BuiltinOperator), _enum_names(tfl.TensorType)
        self.names, self.shapes = [], []
        self.constants: dict[int, torch.Tensor] = {}
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            self.names.append(t.Name().decode())
            shape = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
            self.shapes.append(shape)
            kind = type_names.get(t.Type(), str(t.Type()))
            q = t.Quantization()
            if q is not None and q.ScaleLength():
                raise NotImplementedError(f"{self.path}: tensor {self.names[-1]} is quantized; only float models are supported")
            data = model.Buffers(t.Buffer()).DataAsNumpy() if t.Buffer() > 0 else 0
            if isinstance(data, np.ndarray) and data.size:
                dtype = {"FLOAT32": np.float32, "INT32": np.int32, "INT64": np.int64}.get(kind)
                if dtype is None:
                    raise NotImplementedError(f"{self.path}: constant {self.names[-1]} has type {kind}")
                array = np.frombuffer(data.tobytes(), dtype).reshape(shape)
                self.constants[i] = torch.from_numpy(array.copy())
            elif kind != "FLOAT32":
                raise NotImplementedError(f"{self.path}: tensor {self.names[-1]} has type {kind}; only float32 runs")
        self.inputs = [int(i) for i in g.InputsAsNumpy()]
        self.outputs = [int(i) for i in g.OutputsAsNumpy()]
        if len(self.inputs) != 1:
            raise NotImplementedError(f"{self.path}: {len(self.inputs)} inputs; only one is supported")
        self.batch = self.shapes[self.inputs[0]][0]  # the batch the file was built for
        self.ops = []
        for k in range(g.OperatorsLength()):
            o = g.Operators(k)
            code = model.OperatorCodes(o.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            if name not in OPS:
                raise NotImplementedError(f"{self.path}: operator {k} is {name}, which TfliteGraph does not run")
            ins = [int(i) for i in o.InputsAsNumpy()] if o.InputsLength() else []
            outs = [int(i) for i in o.OutputsAsNumpy()]
            self.ops.append((name, ins, outs, self._options(tfl, name, o)))

    @staticmethod
    def _options(tfl, name: str, o) -> dict:
        table = o.BuiltinOptions()
        cls = {"CONV_2D": tfl.Conv2DOptions, "DEPTHWISE_CONV_2D": tfl.DepthwiseConv2DOptions,
               "ADD": tfl.AddOptions, "SUB": tfl.SubOptions, "MUL": tfl.MulOptions}.get(name)
        if cls is None or table is None:
            return {}
        opt = cls()
        opt.Init(table.Bytes, table.Pos)
        out = {"activation": _enum_names(tfl.ActivationFunctionType)[opt.FusedActivationFunction()]}
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            out.update(padding=_enum_names(tfl.Padding)[opt.Padding()], stride=(opt.StrideH(), opt.StrideW()),
                       dilation=(opt.DilationHFactor(), opt.DilationWFactor()))
            if name == "DEPTHWISE_CONV_2D":
                out["multiplier"] = opt.DepthMultiplier()
        return out

    @property
    def input_shape(self) -> list[int]:
        return list(self.shapes[self.inputs[0]])

    @torch.inference_mode()
    def run(self, x: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Outputs by tensor name for an input batch in the file's layout (NHWC), any batch size."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        expected = self.input_shape
        if list(x.shape[1:]) != expected[1:]:
            raise ValueError(f"{self.path.name}: input shape {tuple(x.shape)}, expected (N, {', '.join(map(str, expected[1:]))})")
        values = dict(self.constants)
        values[self.inputs[0]] = x
        for name, ins, outs, opt in self.ops:
            values[outs[0]] = self._eval(name, [values[i] if i >= 0 else None for i in ins], outs[0], opt)
        return {self.names[i]: values[i].numpy() for i in self.outputs}

    def _eval(self, name: str, args: list, out: int, opt: dict) -> torch.Tensor:
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            y = self._conv(name, *args, opt)
        elif name == "ADD":
            y = args[0] + args[1]
        elif name == "SUB":
            y = args[0] - args[1]
        elif name == "MUL":
            y = args[0] * args[1]
        elif name == "RELU":
            y = torch.relu(args[0])
        elif name == "RELU6":
            y = args[0].clamp(0.0, 6.0)
        elif name == "ABS":
            y = args[0].abs()
        else:  # RESHAPE: the target comes from the second input, else from the output's stored shape
            target = [int(v) for v in args[1].tolist()] if len(args) > 1 and args[1] is not None else self.shapes[out]
            if target and target[0] == self.batch and args[0].shape[0] != self.batch:
                target = [args[0].shape[0], *target[1:]]  # the file's fixed batch -> the runtime batch
            y = args[0].reshape(target)
        return _activation(y, opt.get("activation", "NONE"))

    @staticmethod
    def _conv(name, x, w, b, opt) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW (a channels-last view, no copy)
        if name == "CONV_2D":  # filter [O, H, W, I]
            weight, groups = w.permute(0, 3, 1, 2), 1
        else:  # depthwise filter [1, H, W, I * multiplier]; output channel c reads input c // multiplier
            weight, groups = w.permute(3, 0, 1, 2), x.shape[1]
        (sh, sw), (dh, dw) = opt["stride"], opt["dilation"]
        if opt["padding"] == "SAME":
            (t, bo), (le, r) = _same_pads(x.shape[2], weight.shape[2], sh, dh), _same_pads(x.shape[3], weight.shape[3], sw, dw)
            if (t, bo, le, r) != (0, 0, 0, 0):
                x = F.pad(x, (le, r, t, bo))
        y = F.conv2d(x, weight, b, (sh, sw), 0, (dh, dw), groups)
        return y.permute(0, 2, 3, 1)


def _activation(y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "NONE":
        return y
    if kind == "RELU":
        return torch.relu(y)
    if kind == "RELU6":
        return y.clamp(0.0, 6.0)
    if kind == "RELU_N1_TO_1":
        return y.clamp(-1.0, 1.0)
    if kind == "TANH":
        return torch.tanh(y)
    raise NotImplementedError(f"fused activation {kind} is not supported")
