"""Minimal PNG / PPM reader and PNG writer (zlib + struct; no PIL).

Writes 8-bit grayscale, RGB or RGBA. Reads non-interlaced 8-bit PNGs of colour types 0 (gray),
2 (RGB), 4 (gray+alpha) and 6 (RGBA) with any of the five filters, and binary PPM/PGM (P6/P5, maxval
255). Images are uint8 tensors of shape (H, W, C).
"""
import os
import struct
import zlib

import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> channels


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image) -> bytes:
    """PNG bytes for a uint8 (H, W) or (H, W, C) image, C in 1..4 (tensor or numpy array)."""
    img = torch.as_tensor(image)
    if img.dim() == 2:
        img = img.unsqueeze(-1)
    if img.dim() != 3 or img.shape[-1] not in _COLOR_TYPES:
        raise ValueError(f"image must have shape (H, W) or (H, W, C) with C in 1..4, got {tuple(img.shape)}")
    if img.dtype != torch.uint8:
        raise TypeError(f"image must be uint8, got {img.dtype}")
    h, w, c = img.shape
    if h == 0 or w == 0:
        raise ValueError("image must not be empty")
    rows = img.contiguous().cpu().reshape(h, w * c)
    raw = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), rows], dim=1)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPES[c], 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), 6))
            + _chunk(b"IEND", b""))


def write_png(path, image) -> None:
    with open(os.fspath(path), "wb") as f:
        f.write(encode_png(image))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> torch.Tensor:
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file (bad signature)")
    pos, header, idat = 8, None, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG has no IHDR chunk")
    w, h, depth, ctype, _, _, interlace = header
    if depth != 8 or ctype not in _CHANNELS or interlace != 0:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {ctype}, interlace {interlace}); "
                         "only 8-bit non-interlaced gray/RGB/RGBA is read")
    c = _CHANNELS[ctype]
    stride = w * c
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != h * (stride + 1):
        raise ValueError("PNG image data has the wrong size")
    out = bytearray(h * stride)
    prev = bytearray(stride)
    for row in range(h):
        ftype = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(c, stride):
                line[i] = (line[i] + line[i - c]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - c] if i >= c else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                left = line[i - c] if i >= c else 0
                upleft = prev[i - c] if i >= c else 0
                line[i] = (line[i] + _paeth(left, prev[i], upleft)) & 0xFF
        elif ftype != 0:
            raise ValueError(f"PNG row {row} has unknown filter type {ftype}")
        out[row * stride:(row + 1) * stride] = line
        prev = line
    return torch.frombuffer(out, dtype=torch.uint8).reshape(h, w, c).clone()


def _ppm_tokens(data: bytes, count: int):
    tokens, pos = [], 2
    while len(tokens) < count:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            while data[pos:pos + 1] not in (b"\n", b""):
                pos += 1
            continue
        start = pos
        while not data[pos:pos + 1].isspace():
            pos += 1
        tokens.append(int(data[start:pos]))
    return tokens, pos + 1


def decode_ppm(data: bytes) -> torch.Tensor:
    magic = data[:2]
    if magic not in (b"P6", b"P5"):
        raise ValueError("only binary PPM (P6) and PGM (P5) are read")
    (w, h, maxval), pos = _ppm_tokens(data, 3)
    if maxval != 255:
        raise ValueError(f"only maxval 255 PPM/PGM is read, got {maxval}")
    c = 3 if magic == b"P6" else 1
    body = data[pos:pos + w * h * c]
    if len(body) != w * h * c:
        raise ValueError("PPM/PGM image data is truncated")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(h, w, c).clone()


def read_image(path) -> torch.Tensor:
    """A float (3, H, W) image in [0, 1] from a .png, .ppm/.pgm or .pt file (gray is repeated, alpha dropped)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".pt":
        img = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"{path}: a .pt image must hold a (3, H, W) or (1, H, W) tensor")
        img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        return img.expand(3, -1, -1).clone() if img.shape[0] == 1 else img
    if ext not in (".png", ".ppm", ".pgm", ".pnm"):
        raise ValueError(f"{path}: unsupported image type {ext!r} (use .png, .ppm, .pgm or .pt)")
    with open(path, "rb") as f:
        data = f.read()
    if ext == ".png":
        hwc = decode_png(data)
    elif ext in (".ppm", ".pgm", ".pnm"):
        hwc = decode_ppm(data)
    c = hwc.shape[-1]
    if c in (2, 4):
        hwc = hwc[..., :c - 1]
    img = hwc.permute(2, 0, 1).float() / 255.0
    return img.expand(3, -1, -1).clone() if img.shape[0] == 1 else img
