"""Reading what a client sends: a request body (JSON or multipart) into a request model, and
a base64 image into pixels, with the image's size checked before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from typing import Any

import numpy as np
from fastapi import Request
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from id3pm.images import ImageError, load_image
from id3pm.serving.schemas import one_line, validation_message

DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def form_value(text: str):
    """A multipart text field: JSON where it parses (4, 2.5, true, [..], {..}), else the text."""
    if text.lower() in ("true", "false"):  # what form encoders write for booleans varies
        return text.lower() == "true"
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested beyond Python's stack
        return text


async def form_data(request: Request, files: dict[str, str]) -> dict[str, Any]:
    """A multipart form as the JSON object it stands for; `files` says where uploads go (see read_body)."""
    data: dict[str, Any] = {}
    try:
        form = await request.form(max_files=4, max_fields=32)
    except HTTPException:  # the body is too large (the guard counts it): keep that answer
        raise
    except Exception as e:  # malformed multipart
        raise HTTPException(422, one_line(f"invalid multipart form: {e}")) from None
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile):
            data[key] = form_value(value)
            continue
        if key not in files:
            raise HTTPException(422, f"unexpected file field {key!r}; files go in {sorted(files) or 'none'}")
        b64 = base64.b64encode(await value.read()).decode()
        how = files[key]
        if how == "identity":
            data[key] = {"image": b64}
        elif how.startswith("append:"):
            data.setdefault(how.split(":", 1)[1], []).append(b64)
        else:
            data[key] = b64
    return data


async def read_body(request: Request, model, files: dict[str, str]):
    """A request model from a JSON body, or from a multipart form where `files` maps
    upload fields to how they enter the model ("b64": a base64 string; "identity":
    {"image": base64}; "append:FIELD": appended to a list field). Both go through the
    same strict JSON validation: true is not a number, "4" is not an integer."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = json.dumps(await form_data(request, files))
    elif ctype in ("application/json", ""):
        body = await request.body()
    else:
        raise HTTPException(415, f"unsupported content type {ctype!r}: send application/json or multipart/form-data")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise HTTPException(422, validation_message(e)) from None


def decode_image(b64: str, name: str, max_pixels: int) -> np.ndarray:
    """base64 -> uint8 RGB. A picture over max_pixels is refused from its header, before
    any decoding (413); anything else unreadable is an ImageError naming the item."""
    try:
        data = base64.b64decode(DATA_URL.sub("", b64.strip()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            w, h = im.size
    except Image.DecompressionBombError:  # Pillow's own guard, far above ours
        raise HTTPException(413, f"{name}: image too large (a decompression bomb; limit {max_pixels} pixels)") from None
    except Exception:
        w = h = 0  # not an image Pillow knows: load_image says why
    if w * h > max_pixels:
        raise HTTPException(413, f"{name}: image too large ({w}x{h} > {max_pixels} pixels)")
    try:
        return load_image(data, name=name, max_pixels=max_pixels)
    except ImageError as e:
        if "too large" in str(e):
            raise HTTPException(413, one_line(e)) from None
        raise ImageError(re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))) from None  # no addresses
