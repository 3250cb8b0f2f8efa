"""Image decoding fuzz: seeds of every format id3pm reads (PNG, JPEG, WebP, GIF, TIFF; made
here from the scikit-image astronaut and small synthetic pictures), mutated (bit flips,
overwritten byte runs, truncation, appended junk, duplicated chunks, huge or zero declared
sizes, palette and mode oddities) and sent through `load_image`, through the HTTP input
`decode_image` (base64) and through a real `id3pm prepare`. Used small by
tests/test_fuzz_images.py and large by scripts/reliability.py.

Every decode runs in a sandbox process (class Sandbox) with an address-space budget and a
CPU-time limit, plus a wall-clock backstop, so that a segfault, a hang or a blow-up in
memory is a result that is counted, not the end of the run. A case survives when it is
decoded to a uint8 (H, W, 3) array, or refused with an ImageError (HTTP: also a 413 or
422 HTTPException) whose message is one line starting with the item's name.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
from faults import ROOT, FaultRow, cli, env, prepared_rows

MEMORY_BUDGET = 1536 << 20  # address space one decode may add to the sandbox's own (a bomb past it is seen)
CPU_SECONDS = 10  # CPU time one decode may take: more is a hang (CPU time, not wall time: this machine is shared)
WALL_SECONDS = 120  # a decode that uses no CPU for this long is blocked: a hang
BOMB_EVERY = 500  # every 500th case is a valid picture just under MAX_PIXELS (slow: a few per run)


# -- seeds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    fmt: str  # png, jpeg, webp, gif, tiff
    kind: str  # what is special about it: rgb, palette-trns, 16bit, animated, ...
    data: bytes


def encoded(img, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def base_pictures():
    """The astronaut's face (96x96 RGB) and a small odd-sized synthetic gradient (23x17)."""
    from PIL import Image
    from skimage import data

    astro = Image.fromarray(data.astronaut()).crop((150, 20, 330, 200)).resize((96, 96))
    y, x = np.mgrid[0:17, 0:23]
    small = Image.fromarray(np.stack([x * 11, y * 15, (x + y) * 6], -1).astype(np.uint8))
    return astro, small


@functools.cache
def make_seeds() -> tuple[Seed, ...]:
    from PIL import Image

    astro, small = base_pictures()
    alpha = Image.fromarray(np.tile(np.arange(96, dtype=np.uint8) * 2, (96, 1)))
    rgba = astro.copy()
    rgba.putalpha(alpha)
    grey16 = Image.fromarray(np.arange(23 * 17, dtype=np.uint16).reshape(17, 23) * 170)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to view
    frames = [astro, astro.rotate(90), small.resize((96, 96))]
    pal_frames = [f.quantize(32) for f in frames]
    seeds = [
        Seed("png", "rgb", encoded(astro, "PNG")),
        Seed("png", "rgba", encoded(rgba, "PNG")),
        Seed("png", "palette", encoded(astro.quantize(64), "PNG")),
        Seed("png", "palette-trns", encoded(small.quantize(16), "PNG", transparency=0)),
        Seed("png", "grey", encoded(astro.convert("L"), "PNG")),
        Seed("png", "grey-alpha", encoded(rgba.convert("LA"), "PNG")),
        Seed("png", "bilevel", encoded(astro.convert("1"), "PNG")),
        Seed("png", "16bit", encoded(grey16, "PNG")),
        Seed("png", "16bit-zero", encoded(Image.fromarray(np.zeros((9, 7), np.uint16)), "PNG")),
        Seed("jpeg", "rgb", encoded(astro, "JPEG", quality=90)),
        Seed("jpeg", "grey", encoded(astro.convert("L"), "JPEG")),
        Seed("jpeg", "cmyk", encoded(astro.convert("CMYK"), "JPEG")),
        Seed("jpeg", "progressive", encoded(astro, "JPEG", progressive=True)),
        Seed("jpeg", "exif-rotated", encoded(astro, "JPEG", exif=exif.tobytes())),
        Seed("jpeg", "444-small", encoded(small, "JPEG", subsampling=0, quality=95)),
        Seed("webp", "lossy", encoded(astro, "WEBP", quality=80)),
        Seed("webp", "lossless", encoded(small, "WEBP", lossless=True)),
        Seed("webp", "lossless-rgba", encoded(rgba, "WEBP", lossless=True)),
        Seed("webp", "animated", encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=80)),
        Seed("gif", "static", encoded(astro.quantize(64), "GIF")),
        Seed("gif", "animated", encoded(pal_frames[0], "GIF", save_all=True, append_images=pal_frames[1:],
                                        duration=[50, 80, 120], disposal=2, loop=0)),
        Seed("gif", "transparent", encoded(small.quantize(16), "GIF", transparency=3)),
        Seed("tiff", "raw", encoded(astro, "TIFF")),
        Seed("tiff", "lzw", encoded(astro, "TIFF", compression="tiff_lzw")),
        Seed("tiff", "deflate", encoded(rgba, "TIFF", compression="tiff_adobe_deflate")),
        Seed("tiff", "packbits", encoded(astro.convert("L"), "TIFF", compression="packbits")),
        Seed("tiff", "jpeg", encoded(astro, "TIFF", compression="jpeg")),
        Seed("tiff", "16bit", encoded(grey16, "TIFF")),
        Seed("tiff", "float", encoded(Image.fromarray(np.linspace(0, 1, 391, dtype=np.float32).reshape(17, 23)),
                                      "TIFF")),
        Seed("tiff", "cmyk", encoded(astro.convert("CMYK"), "TIFF", compression="tiff_lzw")),
        Seed("tiff", "grey-alpha", encoded(rgba.convert("LA"), "TIFF")),
        Seed("tiff", "multipage", encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])),
    ]
    return tuple(seeds)


@functools.cache
def bomb_seeds() -> tuple[Seed, ...]:
    """Valid pictures of 7000x7000 = 49M pixels, just under MAX_PIXELS (50M): what the
    largest accepted input costs in memory (the 16-bit one takes the widest path)."""
    from PIL import Image

    side = 7000
    return (Seed("png", "49M-grey", encoded(Image.new("L", (side, side)), "PNG")),
            Seed("png", "49M-16bit", encoded(Image.fromarray(np.zeros((side, side), np.uint16)), "PNG")),
            Seed("jpeg", "49M-rgb", encoded(Image.new("RGB", (side, side), (90, 30, 200)), "JPEG")))


# -- format surgery ---------------------------------------------------------------------------
def put(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


def insert_copy(data: bytes, start: int, end: int) -> bytes:
    return data[:end] + data[start:end] + data[end:]


class Png:
    """Chunks: length (4, big-endian), type (4), data, CRC (4). Edits keep the CRC valid, so
    that they reach the decoder instead of stopping at the CRC check."""

    suffix = ".png"
    COMBOS = ((1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3), (8, 3), (8, 4),
              (16, 4), (8, 6), (16, 6), (16, 3), (3, 0), (8, 7), (0, 2))  # (bit depth, colour type), some invalid

    def chunks(self, data: bytes) -> list[tuple[int, int, bytes]]:
        spans, at = [], 8
        while at + 12 <= len(data):
            length = struct.unpack(">I", data[at:at + 4])[0]
            end = at + 12 + length
            if end > len(data):
                break
            spans.append((at, end, data[at + 4:at + 8]))
            at = end
        return spans

    def with_ihdr(self, data: bytes, body: bytes) -> bytes:
        """data with IHDR's 13 bytes replaced and its CRC recomputed."""
        return put(put(data, 16, body), 29, struct.pack(">I", zlib.crc32(b"IHDR" + body)))

    def set_size(self, data: bytes, w: int, h: int) -> bytes:
        if len(data) < 33:
            return data
        return self.with_ihdr(data, struct.pack(">II", min(w, 2**32 - 1), min(h, 2**32 - 1)) + data[24:29])

    def odd_mode(self, data: bytes, rng: random.Random) -> bytes:
        chunks = self.chunks(data)
        choice = rng.random()
        if choice < 0.5 and len(data) >= 33:
            depth, colour = rng.choice(self.COMBOS)
            interlace = rng.choice([0, 1, 2])  # 2: invalid
            return self.with_ihdr(data, data[16:24] + bytes([depth, colour]) + data[26:28] + bytes([interlace]))
        optional = [c for c in chunks if c[2] in (b"PLTE", b"tRNS")]
        if choice < 0.75 and optional:  # a palette or transparency chunk dropped
            start, end, _ = rng.choice(optional)
            return data[:start] + data[end:]
        if optional:  # a palette or transparency chunk cut short, CRC fixed
            start, end, kind = rng.choice(optional)
            body = data[start + 8:end - 4][: rng.randrange(0, max(1, end - start - 12))]
            chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
            return data[:start] + chunk + data[end:]
        return data

    def duplicate_chunk(self, data: bytes, rng: random.Random) -> bytes:
        chunks = self.chunks(data)
        if not chunks:
            return data
        start, end, _ = rng.choice(chunks)
        return insert_copy(data, start, end)


class Jpeg:
    """Segments after SOI: FF marker, length (2, big-endian, counting itself), data; up to SOS."""

    suffix = ".jpg"
    SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})

    def segments(self, data: bytes) -> list[tuple[int, int, int]]:
        spans, at = [], 2
        while at + 4 <= len(data) and data[at] == 0xFF:
            marker = data[at + 1]
            if marker in (0xD8, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:
                at += 1 if marker == 0xFF else 2
                continue
            end = at + 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
            spans.append((at, min(end, len(data)), marker))
            if marker == 0xDA or end > len(data):
                break
            at = end
        return spans

    def frames(self, data: bytes) -> list[int]:
        return [start for start, end, marker in self.segments(data) if marker in self.SOF and end - start >= 10]

    def set_size(self, data: bytes, w: int, h: int) -> bytes:
        for at in self.frames(data):
            data = put(data, at + 5, struct.pack(">HH", min(h, 65535), min(w, 65535)))
        return data

    def odd_mode(self, data: bytes, rng: random.Random) -> bytes:
        frames = self.frames(data)
        exif = [s for s in self.segments(data) if s[2] == 0xE1]
        adobe = [s for s in self.segments(data) if s[2] == 0xEE and s[1] - s[0] >= 16]
        choice = rng.random()
        if adobe and rng.random() < 0.3:  # Adobe colour transform (CMYK / YCCK / RGB), valid or not
            return put(data, adobe[0][0] + 15, bytes([rng.choice([0, 1, 2, 3, 255])]))
        if exif and choice < 0.3:  # the EXIF orientation set to any value, valid or not
            start, end, _ = exif[0]
            at = max(data.find(b"\x12\x01\x03\x00", start, end), data.find(b"\x01\x12\x00\x03", start, end))
            if at >= 0:
                little = data[at] == 0x12
                return put(data, at + 8, struct.pack("<H" if little else ">H", rng.choice([0, 1, 3, 5, 8, 9, 65535])))
        if not frames:
            return data
        at = frames[0]
        if choice < 0.55:  # number of components
            return put(data, at + 9, bytes([rng.choice([0, 1, 2, 3, 4, 5, 255])]))
        if choice < 0.85:  # sampling factors of a component
            return put(data, at + 11 + 3 * rng.randrange(3), bytes([rng.randrange(256)]))
        return put(data, at + 4, bytes([rng.choice([0, 1, 12, 16, 255])]))  # sample precision

    def duplicate_chunk(self, data: bytes, rng: random.Random) -> bytes:
        segments = self.segments(data)
        if not segments:
            return data
        start, end, _ = rng.choice(segments)
        return insert_copy(data, start, end)


class Gif:
    """Header (6), logical screen (width, height: 2 little-endian each, flags), colour table,
    then extension blocks (0x21) and image descriptors (0x2C)."""

    suffix = ".gif"

    def first_image(self, data: bytes) -> int:
        """Offset of the first image descriptor, or -1."""
        if len(data) < 13:
            return -1
        at = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
        while at < len(data):
            if data[at] == 0x2C:
                return at if at + 10 <= len(data) else -1
            if data[at] != 0x21:
                return -1
            at += 2
            while at < len(data) and data[at]:
                at += data[at] + 1
            at += 1
        return -1

    def set_size(self, data: bytes, w: int, h: int) -> bytes:
        size = struct.pack("<HH", min(w, 65535), min(h, 65535))
        image = self.first_image(data)
        data = put(data, 6, size) if len(data) >= 10 else data
        return put(data, image + 5, size) if image >= 0 else data

    def odd_mode(self, data: bytes, rng: random.Random) -> bytes:
        image = self.first_image(data)
        choice = rng.random()
        if choice < 0.35 or image < 0:  # global colour table flag and size
            return put(data, 10, bytes([rng.randrange(256)])) if len(data) > 10 else data
        if choice < 0.6:  # local colour table flag, interlace, size
            return put(data, image + 9, bytes([rng.randrange(256)]))
        gce = data.find(b"\x21\xf9\x04")
        if choice < 0.8 and gce >= 0:  # transparency flag and index (may point past the palette)
            return put(data, gce + 3, bytes([rng.randrange(256)]) + data[gce + 4:gce + 6] + bytes([rng.randrange(256)]))
        table = 3 * 2 ** ((data[image + 9] & 7) + 1) if data[image + 9] & 0x80 else 0
        return put(data, image + 10 + table, bytes([rng.choice([0, 1, 2, 8, 11, 12, 13, 255])]))  # LZW code size

    def duplicate_chunk(self, data: bytes, rng: random.Random) -> bytes:
        return duplicate_slice(data, rng)


class Webp:
    """RIFF container: 'RIFF', size, 'WEBP', then chunks (fourcc, size (4, little-endian),
    payload, padded to even). Sizes: VP8X canvas (24 bits, minus one), ANMF frame (same),
    VP8L (14 bits, minus one), VP8 (14 bits)."""

    suffix = ".webp"

    def chunks(self, data: bytes) -> list[tuple[int, int, bytes]]:
        spans, at = [], 12
        while at + 8 <= len(data):
            size = struct.unpack("<I", data[at + 4:at + 8])[0]
            end = at + 8 + size + (size & 1)
            if end > len(data):
                break
            spans.append((at, end, data[at:at + 4]))
            if data[at:at + 4] == b"ANMF":  # frames nest their bitstream: look inside the first one
                inner = self.chunks(b"\0" * 12 + data[at + 24:end])  # as if at offset 12 of a file
                spans += [(s + at + 12, e + at + 12, k) for s, e, k in inner]
            at = end
        return spans

    def set_size(self, data: bytes, w: int, h: int) -> bytes:
        for start, _, kind in self.chunks(data):
            at = start + 8
            if kind == b"VP8X" or kind == b"ANMF":
                at += 4 if kind == b"VP8X" else 6
                data = put(data, at, self.minus_one_24(w) + self.minus_one_24(h))
            elif kind == b"VP8L":
                bits = struct.unpack("<I", data[at + 1:at + 5])[0] & ~((1 << 28) - 1)
                bits |= (max(w, 1) - 1) & 0x3FFF | ((max(h, 1) - 1) & 0x3FFF) << 14
                data = put(data, at + 1, struct.pack("<I", bits))
            elif kind == b"VP8 ":
                data = put(data, at + 6, struct.pack("<HH", min(w, 0x3FFF), min(h, 0x3FFF)))
        return data

    @staticmethod
    def minus_one_24(v: int) -> bytes:
        return struct.pack("<I", min(max(v, 1), 1 << 24) - 1)[:3]

    def odd_mode(self, data: bytes, rng: random.Random) -> bytes:
        chunks = [c for c in self.chunks(data) if c[2] in (b"VP8X", b"VP8L", b"ANIM", b"ANMF")]
        if not chunks:
            return byte_run(data, rng)
        start, end, kind = rng.choice(chunks)
        flags = {b"VP8X": 8, b"VP8L": 4, b"ANIM": 8 + rng.randrange(6), b"ANMF": 23}[kind]  # flags / version bits
        return put(data, start + flags, bytes([rng.randrange(256)])) if start + flags < end else data

    def duplicate_chunk(self, data: bytes, rng: random.Random) -> bytes:
        chunks = [c for c in self.chunks(data) if c[0] >= 12]
        if not chunks:
            return data
        start, end, _ = rng.choice(chunks)
        data = insert_copy(data, start, end)
        return put(data, 4, struct.pack("<I", len(data) - 8))  # RIFF size follows, so the copy is read


class Tiff:
    """Header: byte order ('II' or 'MM'), 42, offset of the first IFD; an IFD: a count, then
    12-byte entries (tag, type, count, value or offset of the values)."""

    suffix = ".tif"
    # tag -> values a decoder may meet (half the time one of these, else one of VALUES)
    MODE_TAGS: ClassVar[dict[int, list[int]]] = {
        258: [1, 2, 4, 8, 12, 16, 24, 32, 64],  # bits per sample
        259: [1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946, 34712, 50000],  # compression
        262: [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844, 32845],  # photometric interpretation
        273: [0, 8, 2**31],  # strip offsets
        277: [1, 2, 3, 4, 5, 255],  # samples per pixel
        278: [0, 1, 2**31],  # rows per strip
        279: [0, 1, 2**31],  # strip byte counts
        284: [1, 2],  # planar configuration
        317: [1, 2, 3],  # predictor
        320: [0, 1],  # colour map
        338: [0, 1, 2, 3],  # extra samples: associated alpha (1) gives mode "La" for grey
        339: [1, 2, 3, 4],  # sample format
    }
    VALUES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 64, 255, 32773, 65535, 2**31)
    WIDTHS: ClassVar[dict[int, int]] = {1: 1, 3: 2, 4: 4, 8: 2, 9: 4, 16: 8}  # type -> bytes per value

    def entries(self, data: bytes) -> dict[int, tuple[int, int, int]]:
        """{tag: (offset of the entry, type, count)} of the first IFD."""
        if len(data) < 8 or data[:2] not in (b"II", b"MM"):
            return {}
        order = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", data[4:8])[0]
        if ifd + 2 > len(data):
            return {}
        count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
        found = {}
        for i in range(count):
            at = ifd + 2 + 12 * i
            if at + 12 > len(data):
                break
            tag, kind, n = struct.unpack(order + "HHI", data[at:at + 8])
            found[tag] = (at, kind, n)
        return found

    def set_tag(self, data: bytes, tag: int, value: int) -> bytes:
        entry = self.entries(data).get(tag)
        if entry is None:
            return data
        order = "<" if data[:2] == b"II" else ">"
        at, kind, n = entry
        width = self.WIDTHS.get(kind, 4)
        if kind == 3 and value > 65535 and n == 1:  # a SHORT that cannot hold it becomes a LONG
            data, kind, width = put(data, at + 2, struct.pack(order + "H", 4)), 4, 4
        where = at + 8 if width * n <= 4 else struct.unpack(order + "I", data[at + 8:at + 12])[0]
        packed = value.to_bytes(8, "little" if order == "<" else "big", signed=False)
        packed = packed[:width] if order == "<" else packed[-width:]
        return put(data, where, packed) if where + width <= len(data) else data

    def set_size(self, data: bytes, w: int, h: int) -> bytes:
        return self.set_tag(self.set_tag(data, 256, min(w, 2**32 - 1)), 257, min(h, 2**32 - 1))

    def odd_mode(self, data: bytes, rng: random.Random) -> bytes:
        tag = rng.choice(list(self.MODE_TAGS))
        return self.set_tag(data, tag, rng.choice(self.MODE_TAGS[tag] if rng.random() < 0.5 else self.VALUES))

    def duplicate_chunk(self, data: bytes, rng: random.Random) -> bytes:
        return duplicate_slice(data, rng)


FORMATS = {"png": Png(), "jpeg": Jpeg(), "webp": Webp(), "gif": Gif(), "tiff": Tiff()}


# -- mutations --------------------------------------------------------------------------------
HUGE_SIZES = [(60000, 60000), (65535, 65535), (2**31 - 1, 2**31 - 1), (1, 2**31 - 1), (100_000, 1), (16384, 16384),
              (7072, 7072), (7000, 7000)]  # the last two: just over and just under MAX_PIXELS (50M)
ZERO_SIZES = [(0, 0), (0, 96), (96, 0)]
MUTATIONS = {  # name -> weight
    "none": 2, "bit-flips": 20, "byte-run": 12, "truncation": 14, "junk": 8, "dup-chunk": 10, "huge-size": 12,
    "zero-size": 6, "mode": 16,
}


def position(data: bytes, rng: random.Random) -> int:
    """Half the time in the first 512 bytes, where the headers are."""
    return rng.randrange(min(len(data), 512) if rng.random() < 0.5 else len(data))


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[position(data, rng)] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_run(data: bytes, rng: random.Random) -> bytes:
    at, n = position(data, rng), rng.randint(1, 32)
    fill = rng.choice([b"\x00" * n, b"\xff" * n, bytes(rng.randrange(256) for _ in range(n))])
    return put(data, at, fill[: len(data) - at])


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: position(data, rng)]


def append_junk(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return data + data  # a second picture behind the first
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))


def duplicate_slice(data: bytes, rng: random.Random) -> bytes:
    start = position(data, rng)
    return insert_copy(data, start, min(len(data), start + rng.randint(1, 256)))


def mutate(seed: Seed, mutation: str, rng: random.Random) -> bytes:
    fmt, data = FORMATS[seed.fmt], seed.data
    if mutation == "bit-flips":
        return flip_bits(data, rng)
    if mutation == "byte-run":
        return byte_run(data, rng)
    if mutation == "truncation":
        return truncate(data, rng)
    if mutation == "junk":
        return append_junk(data, rng)
    if mutation == "dup-chunk":
        return fmt.duplicate_chunk(data, rng)
    if mutation == "huge-size":
        return fmt.set_size(data, *rng.choice(HUGE_SIZES))
    if mutation == "zero-size":
        return fmt.set_size(data, *rng.choice(ZERO_SIZES))
    if mutation == "mode":
        return fmt.odd_mode(data, rng)
    return data


@dataclass
class Case:
    index: int
    fmt: str
    seed_kind: str
    mutation: str
    data: bytes

    @property
    def name(self) -> str:
        return f"case{self.index:05d}-{self.fmt}-{self.seed_kind}-{self.mutation}{FORMATS[self.fmt].suffix}"


def fuzz_cases(n: int, seed: int = 0):
    """n cases, the same for the same seed: formats in turn, a random seed picture and mutation;
    every BOMB_EVERY-th case a valid picture just under MAX_PIXELS."""
    seeds = make_seeds()
    by_format = {fmt: [s for s in seeds if s.fmt == fmt] for fmt in FORMATS}
    rng = random.Random(seed)
    names, weights = list(MUTATIONS), list(MUTATIONS.values())
    for i in range(n):
        if i % BOMB_EVERY == BOMB_EVERY - 1:
            bomb = bomb_seeds()[(i // BOMB_EVERY) % len(bomb_seeds())]
            yield Case(i, bomb.fmt, bomb.kind, "none", bomb.data)
            continue
        picked = rng.choice(by_format[list(FORMATS)[i % len(FORMATS)]])
        mutation = rng.choices(names, weights)[0]
        yield Case(i, picked.fmt, picked.kind, mutation, mutate(picked, mutation, rng))


# -- the sandbox ------------------------------------------------------------------------------
def worker_loop(mode: str, budget: int) -> None:
    """The sandbox's side (run by Sandbox, in its own process): decode what arrives on stdin,
    answer on stdout, under an address-space budget and a per-decode CPU-time limit."""
    from multiprocessing.connection import Connection

    requests, replies = Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a library that prints must not corrupt the replies
    decode = decoder(mode)  # imported before the budget is set: the budget counts what decoding adds
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status = Path("/proc/self/status").read_text().splitlines()
    vm = int(next(line.split()[1] for line in status if line.startswith("VmSize:"))) << 10
    resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
    replies.send({"baseline_rss_kb": baseline})
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = math.ceil(usage.ru_utime + usage.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (used + request["cpu_seconds"], resource.RLIM_INFINITY))
        replies.send(answer(decode, request))


def decoder(mode: str):
    if mode == "load":
        from id3pm.images import load_image

        return lambda r: load_image(r["data"], name=r["name"], max_pixels=r["max_pixels"])
    if mode == "http":
        from id3pm.serving.inputs import decode_image

        return lambda r: decode_image(r["b64"], r["name"], r["max_pixels"])
    if mode == "probe":  # misbehaves on request: the tests check that the sandbox sees it
        return probe
    raise ValueError(f"unknown sandbox mode {mode!r}")


def probe(request: dict):
    what = request["name"]
    if what == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "spin":
        while True:
            pass
    if what == "block":
        time.sleep(3600)
    if what == "allocate":
        return np.ones(1 << 31, np.uint8)  # 2 GiB, over the budget
    if what == "two lines":
        from id3pm.images import ImageError

        raise ImageError("two lines: cannot read image\nsecond line")
    if what == "escape":
        raise KeyError("escape")
    return np.zeros((2, 2, 3), np.uint8)


def answer(decode, request: dict) -> dict:
    """What the decode did, for the parent to judge."""
    try:
        img = decode(request)
        reply = {"kind": "returned", "type": type(img).__name__, "dtype": str(getattr(img, "dtype", "")),
                 "shape": tuple(getattr(img, "shape", ()))}
    except BaseException as e:  # anything at all: the parent judges it
        reply = {"kind": "raised", "type": type(e).__name__, "message": str(e),
                 "status": getattr(e, "status_code", None), "detail": getattr(e, "detail", None)}
    reply["declared"] = declared_size(request["data"])
    reply["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return reply


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The size the header claims, however large, when Pillow can read one."""
    from PIL import Image

    guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # only here, after the decode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception:
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = guard


class Sandbox:
    """A worker process that decodes one item at a time ('load': load_image, 'http':
    decode_image, 'probe': test misbehaviour) under MEMORY_BUDGET and CPU_SECONDS; killed
    and restarted when it dies or hangs. Its stderr goes to `log`."""

    def __init__(self, mode: str, log: Path, budget: int = MEMORY_BUDGET, cpu_seconds: int = CPU_SECONDS,
                 wall_seconds: float = WALL_SECONDS):
        self.mode, self.log, self.budget = mode, log, budget
        self.cpu_seconds, self.wall_seconds = cpu_seconds, wall_seconds
        self.proc = None
        self.peak_mb = 0.0  # the most memory (RSS) a decode added to the worker's baseline
        self.starts = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from multiprocessing.connection import Connection

        code = "import sys; from fuzz_images import worker_loop; worker_loop(sys.argv[1], int(sys.argv[2]))"
        path = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        worker_env = {**env(), "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", code, self.mode, str(self.budget)], env=worker_env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self.requests = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.starts += 1
        if not self.replies.poll(600):
            raise RuntimeError(f"the {self.mode} sandbox did not start in 600 s (see {self.log})")
        self.baseline_kb = self.replies.recv()["baseline_rss_kb"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.requests.close()
            self.replies.close()
            self.proc = None

    def answered(self) -> bool:
        """Wait for the reply while the worker keeps using CPU (starved by other work on this
        machine, a decode can take long in wall time; RLIMIT_CPU ends one that spins); False
        when it used no CPU for wall_seconds: blocked, a hang."""
        used = cpu_time(self.proc.pid)
        while not self.replies.poll(self.wall_seconds):
            now = cpu_time(self.proc.pid)
            if now <= used + 0.01:
                return False
            used = now
        return True

    def run(self, data: bytes, name: str, max_pixels: int, b64: str | None = None) -> dict:
        """One decode: the worker's reply, or {'kind': 'died', 'returncode'} / {'kind': 'timeout'}."""
        if self.proc is None:
            self.start()
        self.requests.send({"data": data, "b64": b64, "name": name, "max_pixels": max_pixels,
                            "cpu_seconds": self.cpu_seconds})
        if not self.answered():
            self.stop()
            return {"kind": "timeout"}
        try:
            reply = self.replies.recv()
        except EOFError:  # the worker died in the decode
            code = self.proc.wait()
            self.stop()
            return {"kind": "died", "returncode": code}
        self.peak_mb = max(self.peak_mb, (reply["peak_rss_kb"] - self.baseline_kb) / 1024)
        return reply


def cpu_time(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- judging ----------------------------------------------------------------------------------
FAILURES = ("crash", "hang", "memory")


def judge(reply: dict, name: str, max_pixels: int, http: bool = False,
          cpu_seconds: int = CPU_SECONDS) -> tuple[str, str]:
    """(verdict, why): 'ok' (a uint8 HxWx3 array), 'refused' (a one-line refusal naming the
    item), or a failure: 'crash', 'hang', 'memory' (a MemoryError: the decode wanted more
    than MEMORY_BUDGET)."""
    if reply["kind"] == "timeout":
        return "hang", "blocked: no CPU used and no answer for the wall-clock backstop"
    if reply["kind"] == "died":
        code = reply["returncode"]
        if code == -signal.SIGXCPU:
            return "hang", f"more than {cpu_seconds} s of CPU"
        return "crash", f"the decoding process died ({signal.Signals(-code).name if code < 0 else f'exit {code}'})"
    declared = reply.get("declared")
    too_large = declared is not None and declared[0] * declared[1] > max_pixels
    if reply["kind"] == "returned":
        shape = reply["shape"]
        if reply["type"] != "ndarray" or reply["dtype"] != "uint8" or len(shape) != 3 or shape[2] != 3 \
                or 0 in shape:
            return "crash", f"returned {reply['type']} {reply['dtype']} {shape}"
        if shape[0] * shape[1] > max_pixels:
            return "crash", f"decoded {shape} although over {max_pixels} pixels"
        return "ok", ""
    return judge_refusal(reply, name, max_pixels, http, too_large)


def judge_refusal(reply: dict, name: str, max_pixels: int, http: bool, too_large: bool) -> tuple[str, str]:
    kind = reply["type"]
    message = reply["detail"] if kind == "HTTPException" else reply["message"]
    if kind == "MemoryError" or "MemoryError" in str(message) or "memory available" in str(message):
        return "memory", f"{kind}: {one_line(message)}"
    allowed = ("ImageError", "HTTPException") if http else ("ImageError",)
    if kind not in allowed:
        return "crash", f"escaped as {kind}: {one_line(message)}"
    if kind == "HTTPException" and reply["status"] not in (413, 422):
        return "crash", f"HTTP {reply['status']}: {one_line(message)}"
    if not isinstance(message, str) or "\n" in message or "\r" in message or not message.startswith(f"{name}:"):
        return "crash", f"not one line starting with the name: {message!r}"[:300]
    if too_large and "too large" not in message:
        return "crash", f"declared over {max_pixels} pixels, refused for another reason: {message}"
    if too_large and http and reply["status"] != 413:
        return "crash", f"declared over {max_pixels} pixels, not answered 413: {message}"
    return "refused", ""


def one_line(text) -> str:
    return " ".join(str(text).split())[:200]


class Tally:
    """Verdicts of a run, counted per verdict, format and mutation, with the first failures."""

    def __init__(self):
        self.verdicts, self.formats, self.mutations, self.lost_by = Counter(), Counter(), Counter(), Counter()
        self.failures: list[str] = []

    def add(self, case: Case, verdict: str, why: str) -> None:
        self.verdicts[verdict] += 1
        self.formats[case.fmt] += 1
        self.mutations[case.mutation] += 1
        if verdict in FAILURES:
            self.lost_by[case.fmt] += 1
            self.lost_by[case.mutation] += 1
            self.failures.append(f"{case.name}: {verdict}: {why}")

    @property
    def lost(self) -> int:
        return sum(self.verdicts[v] for v in FAILURES)

    def counts(self, counter: Counter) -> str:
        return ", ".join(f"{k} {n}" + (f" ({self.lost_by[k]} lost)" if self.lost_by[k] else "")
                         for k, n in sorted(counter.items()))

    def write(self, path: Path) -> None:
        """Every failure, one a line (the row's note shows only the first)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f + "\n" for f in self.failures))

    def row(self, fault: str, seconds: float, extra: str = "") -> FaultRow:
        tried = sum(self.verdicts.values())
        v = self.verdicts
        note = (f"{v['ok']} decoded, {v['refused']} refused in one line, {v['crash']} crashes, {v['hang']} hangs, "
                f"{v['memory']} over the memory budget; formats: {self.counts(self.formats)}; "
                f"mutations: {self.counts(self.mutations)}{extra}; {seconds:.0f} s")
        if self.failures:
            note += f"; first failure: {self.failures[0]}"
        return FaultRow(fault, tried, tried - self.lost, self.lost, note)


# -- the three paths ------------------------------------------------------------------------
def image_fuzz(root: Path, cases: int, seed: int = 0) -> FaultRow:
    """`cases` fuzzed images through load_image (max_pixels = MAX_PIXELS), one sandboxed decode each."""
    from id3pm.images import MAX_PIXELS

    start, tally = time.time(), Tally()
    with Sandbox("load", root / "sandbox-load.log") as box:
        for case in fuzz_cases(cases, seed):
            tally.add(case, *judge(box.run(case.data, case.name, MAX_PIXELS), case.name, MAX_PIXELS))
        extra = f"; peak memory {box.peak_mb:.0f} MB over the worker's baseline, {box.starts} worker starts"
    tally.write(root / "failures.txt")
    return tally.row("fuzzed image through `load_image` (decoded, or refused in one line?)", time.time() - start,
                     extra)


HTTP_MAX_PIXELS = 16_000_000  # id3pm.serving.limits.Limits().max_pixels (not imported: it loads torch)


def as_base64(data: bytes, rng: random.Random) -> tuple[str, bool]:
    """(text, intact): how clients send it: plain, as a data URL, padded with spaces, or
    (rarely) broken by a character that does not belong."""
    text = base64.b64encode(data).decode()
    choice = rng.random()
    if choice < 0.25:
        return "data:image/png;base64," + text, True
    if choice < 0.35:
        return f"  {text}\n", True
    if choice < 0.4 and text:
        at = rng.randrange(len(text))
        return text[:at] + rng.choice(["!", "=", "\n", "é"]) + text[at:], False
    return text, True


def http_image_fuzz(root: Path, cases: int, seed: int = 0) -> FaultRow:
    """`cases` fuzzed images, base64-encoded as a client sends them, through the HTTP input
    decode_image (max_pixels = the serving default): decoded, or refused with an ImageError
    (the app answers 422) or an HTTPException 413/422, in one line naming the item."""
    start, tally, rng = time.time(), Tally(), random.Random(seed)
    with Sandbox("http", root / "sandbox-http.log") as box:
        for case in fuzz_cases(cases, seed):
            b64, intact = as_base64(case.data, rng)
            reply = box.run(case.data, case.name, HTTP_MAX_PIXELS, b64=b64)
            if not intact:  # refused as invalid base64 before any size is known: no 413 to expect
                reply["declared"] = None
            tally.add(case, *judge(reply, case.name, HTTP_MAX_PIXELS, http=True))
        extra = f"; peak memory {box.peak_mb:.0f} MB over the worker's baseline"
    tally.write(root / "failures.txt")
    return tally.row("fuzzed base64 image through the HTTP input `decode_image`", time.time() - start, extra)


def prepare_image_fuzz(root: Path, files: int, seed: int = 0, timeout: float = 1800) -> FaultRow:
    """A folder of `files` fuzzed images through a real `id3pm prepare` (table encoder, one
    worker). Survived: a file that load_image decodes (in the sandbox) has a valid row (8x8
    crop, the table's vector); one it refuses has exactly one skip line, starting with its name."""
    from id3pm.images import MAX_PIXELS

    start = time.time()
    cases = list(fuzz_cases(files, seed))
    src, out, table = root / "src", root / "prepared", root / "vectors.npz"
    src.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (src / case.name).write_bytes(case.data)
    vectors = np.random.default_rng(seed).normal(size=(files, 8)).astype(np.float32)
    np.savez(table, keys=np.array([c.name for c in cases]), vectors=vectors)
    with Sandbox("load", root / "sandbox-load.log") as box:
        expected = {c.name: judge(box.run(c.data, c.name, MAX_PIXELS), c.name, MAX_PIXELS)[0] for c in cases}
    cmd = cli("prepare", str(src), str(out), "--encoder", f"table:path={table}", "--aligned", "--size", "8",
              "--workers", "1", "--chunk", "50", "--holdout", "0.2", "--image-format", "png")
    fault = "folder of fuzzed images through `id3pm prepare` (a row or one skip line each?)"
    try:
        proc = subprocess.run(cmd, check=False, env=env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return FaultRow(fault, files, 0, files, f"prepare did not finish in {timeout:.0f} s")
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return FaultRow(fault, files, 0, files, f"prepare exited {proc.returncode}: {last}")
    rows, skips = prepared_rows(out), skip_lines(out)
    problems = []
    for case, vector in zip(cases, vectors):
        problem = prepare_problem(case.name, expected[case.name], rows, skips, vector)
        if problem:
            problems.append(f"{case.name}: {problem}")
    decoded = sum(v == "ok" for v in expected.values())
    note = (f"{decoded} decodable files written, {files - decoded} skipped with one line each; "
            f"{len(problems)} wrong; {time.time() - start:.0f} s" + (f"; first: {problems[0]}" if problems else ""))
    return FaultRow(fault, files, files - len(problems), len(problems), note)


def skip_lines(out: Path) -> dict[str, list[str]]:
    """{key: [reason, ...]} of prepare's skip logs."""
    skips: dict[str, list[str]] = {}
    for path in sorted((out / "skipped").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            skips.setdefault(item["key"], []).append(item["reason"])
    return skips


def prepare_problem(key: str, expected: str, rows: dict, skips: dict, vector: np.ndarray) -> str | None:
    """What is wrong with how prepare handled one file, or None."""
    from PIL import Image

    if expected in FAILURES:
        return f"load_image fails on it ({expected})"
    if key in rows and key in skips:
        return "both written and skipped"
    if expected == "ok":
        if key not in rows:
            return f"decodable but not written ({skips.get(key, ['no skip line'])[0]})"
        _, vec, img = rows[key]
        pixels = np.asarray(Image.open(io.BytesIO(img)))
        if pixels.shape != (8, 8, 3) or pixels.dtype != np.uint8:
            return f"stored crop is {pixels.dtype} {pixels.shape}"
        if vec != vector.tobytes():
            return "stored vector differs from the table's"
        return None
    reasons = skips.get(key, [])
    if len(reasons) != 1:
        return f"refused by load_image but {len(reasons)} skip lines" + (" and a row" if key in rows else "")
    if "\n" in reasons[0] or not reasons[0].startswith(f"{key}:") or "unexpected" in reasons[0]:
        return f"skip line does not name it in one line: {reasons[0]!r}"[:300]
    return None


def main() -> None:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description="image decoding fuzz: load_image, the HTTP input, id3pm prepare")
    p.add_argument("--cases", type=int, default=10_000, help="load_image cases")
    p.add_argument("--http", type=int, default=500, help="HTTP input cases")
    p.add_argument("--prepare", type=int, default=200, help="files for id3pm prepare")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [image_fuzz(Path(tmp) / "load", args.cases, args.seed),
                http_image_fuzz(Path(tmp) / "http", args.http, args.seed + 1),
                prepare_image_fuzz(Path(tmp) / "prepare", args.prepare, args.seed + 2)]
        for row in rows:
            print(f"| {row.fault} | {row.tried} | {row.survived} | {row.lost} | {row.note} |", flush=True)
        log = "\n".join(p.read_text(errors="replace")[-2000:] for p in Path(tmp).glob("*/sandbox-*.log"))
        print("sandbox stderr (tail):", log[-4000:] or "(empty)")
    sys.exit(1 if any(r.lost for r in rows) else 0)


if __name__ == "__main__":
    main()
