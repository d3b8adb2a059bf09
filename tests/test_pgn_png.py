import struct
import zlib

import pytest
import torch

from perfloss.pgn import visualize
from perfloss.pgn.png import decode_png, encode_png, read_image, write_png


pytestmark = pytest.mark.usefixtures("one_thread")


def parse_png(data):
    """Independent minimal PNG parser: signature, chunk CRCs, IHDR, IDAT -> (w, h, ctype, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, ctype, comp, filt, inter = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, inter) == (8, 0, 0, 0)
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    assert len(raw) == h * (1 + w * channels)
    return w, h, ctype, raw


def test_written_png_is_valid(tmp_path):
    img = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    path = tmp_path / "a.png"
    write_png(path, img)
    w, h, ctype, raw = parse_png(path.read_bytes())
    assert (w, h, ctype) == (7, 5, 2)
    row1 = raw[1 * (1 + 21):2 * (1 + 21)]
    assert row1[0] == 0 and list(row1[1:]) == img[1].flatten().tolist()
    assert torch.equal(decode_png(path.read_bytes()), img)
    assert torch.equal(decode_png(encode_png(img[..., 0])), img[..., :1])


def test_png_reader_undoes_filters():
    img = torch.randint(0, 256, (4, 3, 3), dtype=torch.uint8)
    # rows filtered with Sub (1) and Up (2) by hand
    rows = []
    for r in range(4):
        line = img[r].flatten().tolist()
        if r % 2 == 0:
            rows.append(bytes([1] + [line[i] if i < 3 else (line[i] - line[i - 3]) % 256 for i in range(9)]))
        else:
            prev = img[r - 1].flatten().tolist()
            rows.append(bytes([2] + [(line[i] - prev[i]) % 256 for i in range(9)]))
    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    assert torch.equal(decode_png(data), img)


def test_read_image_formats(tmp_path):
    img = torch.randint(0, 256, (4, 6, 3), dtype=torch.uint8)
    write_png(tmp_path / "x.png", img)
    (tmp_path / "x.ppm").write_bytes(b"P6 6 4 255\n" + bytes(img.flatten().tolist()))
    torch.save(img.permute(2, 0, 1).float() / 255, tmp_path / "x.pt")
    ref = img.permute(2, 0, 1).float() / 255
    for name in ("x.png", "x.ppm", "x.pt"):
        torch.testing.assert_close(read_image(tmp_path / name), ref)
    with pytest.raises(ValueError, match="unsupported image type"):
        read_image(tmp_path / "x.jpg")


def test_visualize_writes_a_grid(tmp_path):
    n, h, w = 3, 8, 10
    t = [torch.rand(n, 3, h, w) for _ in range(3)] + [torch.randn(n, 3, h, w) for _ in range(2)]
    path = tmp_path / "grid.png"
    visualize(*t, path, pad=2)
    width, height, ctype, _ = parse_png(path.read_bytes())
    assert (width, height, ctype) == (5 * (w + 2) + 2, n * (h + 2) + 2, 2)
    with pytest.raises(ValueError, match="g_pred must have the shape of y_hat"):
        visualize(t[0], t[1], t[2], torch.rand(n, 3, h, w + 1), None, path)
