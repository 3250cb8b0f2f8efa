"""What the API takes and gives: request models, response models, and the one-line error.

Request models are built per app (`request_models`) because the limits and the length of
an identity vector belong to the server: the OpenAPI schema then tells clients the real
bounds. They are strict: true is not a number, "4" is not an integer, unknown fields are
refused. Every error body is {"detail": "<one line>"} (`ErrorOut`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from id3pm import images
from id3pm.sampling import SAMPLERS
from id3pm.serving.limits import Limits

# Identity vector entries are bounded so that float32 cannot overflow (real ones are O(1)).
MAX_ENTRY = 1000.0


def finite(lo: float, hi: float) -> Any:
    """The type of a float in [lo, hi]; NaN and infinities are refused."""
    return Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False)]


# -- requests ------------------------------------------------------------------------------------
def request_models(limits: Limits, id_dim: int, max_steps: int, direction_names: list[str]):
    """(GenerateRequest, InterpolateRequest, EditRequest, EmbedRequest) for this server."""

    def right_length(v: list[float] | None) -> list[float] | None:
        if v is not None and len(v) != id_dim:
            raise ValueError(f"expected an identity vector of {id_dim} numbers, got {len(v)}")
        return v

    Vector = Annotated[list[finite(-MAX_ENTRY, MAX_ENTRY)], AfterValidator(right_length),
                       Field(json_schema_extra={"minItems": id_dim, "maxItems": id_dim})]
    Sampler = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]

    class Identity(BaseModel):
        """One identity: its vector, or a photo (base64, any format Pillow reads) to embed."""
        model_config = ConfigDict(extra="forbid", strict=True,
                                  json_schema_extra={"oneOf": [{"required": ["vector"]}, {"required": ["image"]}]})
        # Absent means not given (the schema does not offer null: give the other one instead).
        vector: Vector = Field(None, description=f"identity vector ({id_dim} numbers)")
        image: str = Field(None, description="base64 image (a data: URL prefix is allowed)")
        aligned: bool = Field(False, description="the image is already a canonical face crop")

        @model_validator(mode="after")
        def exactly_one(self):
            if (self.vector is None) == (self.image is None):
                raise ValueError("give exactly one of 'vector' or 'image'")
            return self

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        guidance: finite(0, limits.max_guidance) = Field(2.0, description="classifier-free guidance scale")
        # 2 at least: a one-step respaced schedule breaks GaussianDiffusion (no previous step).
        steps: int = Field(min(25, max_steps), ge=2, le=max_steps)
        sampler: Sampler = "dpmpp_2m"
        seed: int = Field(0, ge=0, le=2**31 - 1)
        upscale: bool | None = Field(None, description="super-resolve the pictures (default: when the server "
                                                         "has an upsampler, e.g. a shipped one that fits the model)")

    # Defaults never exceed the limits (pydantic does not check defaults).
    max_n = min(limits.max_n, limits.max_images)
    max_frames = min(limits.max_frames, limits.max_images)
    k = min(5, limits.max_strengths, limits.max_images)
    default_strengths = np.linspace(-2, 2, k).tolist() if k > 1 else [1.0]

    class GenerateRequest(Sampling, Identity):
        n: int = Field(min(4, max_n), ge=1, le=max_n)
        queries: int = Field(0, ge=0, le=limits.max_queries,
                             description="black-box queries to the server's encoder (id3pm.refine); the n "
                                         "closest images are returned. 0: none, as in the paper")
        search: Literal["best_of_n", "renoise"] = Field("best_of_n", description="how the queries are spent")
        strength: finite(0.01, 1.0) = Field(0.5, description="renoise: how far candidates are re-noised")

        @model_validator(mode="after")
        def enough_queries(self):
            if 0 < self.queries < self.n:
                raise ValueError(f"queries ({self.queries}) must be 0 or at least n ({self.n}): "
                                 "the n closest of them are returned")
            return self

    class InterpolateRequest(Sampling):
        a: Identity
        b: Identity
        frames: int = Field(min(7, max_frames), ge=2, le=max_frames)

    class EditRequest(Sampling, Identity):
        direction: str = Field(..., max_length=200,
                               json_schema_extra={"enum": direction_names} if direction_names else None)
        strengths: list[finite(-limits.max_strength, limits.max_strength)] = Field(
            default_factory=lambda: list(default_strengths), min_length=1, max_length=limits.max_strengths)
        n: int = Field(1, ge=1, le=limits.max_n)

        @model_validator(mode="after")
        def bounded_total(self):
            if len(self.strengths) * self.n > limits.max_images:
                raise ValueError(f"{len(self.strengths)} strengths x n={self.n} images exceeds the limit of "
                                 f"{limits.max_images} images per request")
            return self

    class EmbedRequest(BaseModel):
        """The remote-encoder protocol of id3pm.encoders.remote."""
        model_config = ConfigDict(extra="forbid", strict=True)
        images: list[str] = Field(..., min_length=1, max_length=limits.max_embed_images,
                                  description="base64 images")
        aligned: bool = False

    return GenerateRequest, InterpolateRequest, EditRequest, EmbedRequest


# -- responses -----------------------------------------------------------------------------------
class ImageOut(BaseModel):
    png: str = Field(..., description="base64 PNG, marked synthetic in its text chunks")
    seed: int
    distance: float | None = Field(None, description="identity distance to the input (null: not measurable)")


class EditImageOut(ImageOut):
    strength: float


class FrameOut(BaseModel):
    png: str
    t: float
    distance_a: float | None
    distance_b: float | None


# The three responses of rendering routes end in the same four fields. They are written out
# in each rather than inherited: pydantic puts inherited fields first, which would reorder the
# keys of every response and the `required` lists of the published schema.
class GenerateResponse(BaseModel):
    images: list[ImageOut]
    vector: list[float] = Field(..., description="the identity vector generated from")
    refine: dict[str, Any] | None = Field(None, description="with queries: the search's record (queries spent, "
                                          "the best distance after each query, each image's seeds)")
    distance_metric: str
    params: dict[str, Any]
    warnings: list[str] = []
    synthetic: bool = True


class InterpolateResponse(BaseModel):
    frames: list[FrameOut]
    distance_metric: str
    params: dict[str, Any]
    warnings: list[str] = []
    synthetic: bool = True


class EditResponse(BaseModel):
    images: list[EditImageOut]
    direction: str
    distance_metric: str
    params: dict[str, Any]
    warnings: list[str] = []
    synthetic: bool = True


class EmbedResponse(BaseModel):
    vectors: list[list[float] | None]
    errors: list[str | None]
    warnings: list[str | None] = []
    dim: int
    encoder: str


# -- errors --------------------------------------------------------------------------------------
class ErrorOut(BaseModel):
    detail: str


def one_line(text: Any, limit: int = 400) -> str:
    """An error detail as one bounded line: exception texts may span lines or echo long input."""
    return images.one_line(text, limit)


def validation_message(e: ValidationError | RequestValidationError) -> str:
    """The first problem as one line: 'n: Input should be less than or equal to 16'."""
    errs = e.errors()
    if not errs:
        return "invalid request"
    first = errs[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body",))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
    return one_line(f"{loc}: {msg}{more}" if loc else f"{msg}{more}")
