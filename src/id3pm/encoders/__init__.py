"""Black-box identity encoders: uint8 RGB images in, float32 (N, D) vectors out.

    enc = make_encoder("dlib")                      # or {"name": "onnx", "path": "arcface.onnx"}
    result = enc.encode([photo1, photo2])          # detects and aligns the faces
    result = enc.encode(generated, aligned=True)   # canonical crops, no detection
"""

from __future__ import annotations

from id3pm.encoders.base import Crop, EncodeResult, Encoder, check_vectors, identity_distance

BACKENDS = {
    "dlib": "id3pm.encoders.dlib_encoder:DlibEncoder",
    "onnx": "id3pm.encoders.onnx_encoder:OnnxEncoder",
    "remote": "id3pm.encoders.remote:RemoteEncoder",
    "table": "id3pm.encoders.table:TableEncoder",
    "faceres": "id3pm.encoders.faceres:FaceresEncoder",
    "mobilefacenet": "id3pm.encoders.mobilefacenet:MobileFaceNetEncoder",
    "protected": "id3pm.encoders.protected:ProtectedEncoder",  # any of the above + a template transform
}


def make_encoder(spec: str | dict | Encoder, **options) -> Encoder:
    """An encoder from its name ("dlib"), a spec dict ({"name": "onnx", "path": ...}) or
    a "name:key=value,key=value" string as given on the command line."""
    if isinstance(spec, Encoder):
        return spec
    if isinstance(spec, str):
        spec = parse_encoder_spec(spec)
    spec = {**spec, **options}
    name = spec.pop("name")
    if name not in BACKENDS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    import importlib

    return getattr(importlib.import_module(module), cls)(**spec)


def parse_encoder_spec(text: str) -> dict:
    """"onnx:path=arcface.onnx,input_size=112" -> {"name": "onnx", "path": ..., "input_size": 112}."""
    name, _, rest = text.partition(":")
    spec: dict = {"name": name.strip()}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"encoder option {item!r} is not key=value")
        spec[key.strip()] = _parse_value(value.strip())
    return spec


def _parse_value(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


__all__ = ["Crop", "EncodeResult", "Encoder", "check_vectors", "identity_distance", "make_encoder", "parse_encoder_spec"]
