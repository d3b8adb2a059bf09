"""perfloss.images on real files that Pillow writes in tmp_path: each format, bit depth and colour
mode, corrupt files, folders, crops and the ImageFolder dataset. References are built in the test
from the arrays written (numpy / plain torch), not by the code under test."""
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from perfloss.images import (ImageFolder, center_crop, list_images, random_crop, read_image, sample_photographs,
                             write_image)

pytestmark = pytest.mark.usefixtures("one_thread")


def _rgb_u8(h=12, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _as_chw(hwc_u8):
    """The reference conversion: uint8 (H, W, 3) -> float (3, H, W) / 255."""
    return torch.from_numpy(hwc_u8.astype(np.float64) / 255).permute(2, 0, 1).float()


@pytest.mark.parametrize("suffix, options", [(".png", {}), (".bmp", {}), (".tif", {}), (".tiff", {}),
                                             (".webp", {"lossless": True})])
def test_lossless_formats_read_exactly(tmp_path, suffix, options):
    pixels = _rgb_u8()
    path = tmp_path / f"x{suffix}"
    Image.fromarray(pixels).save(path, **options)
    img = read_image(path)
    assert img.dtype == torch.float32 and img.shape == (3, 12, 20)
    torch.testing.assert_close(img, _as_chw(pixels), rtol=0, atol=1e-7)


def test_jpeg_reads_close_to_what_was_written(tmp_path):
    # a smooth image, so JPEG's error stays small
    yy, xx = np.mgrid[0:32, 0:48]
    pixels = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1).astype(np.uint8)
    for name in ("a.jpg", "b.JPEG"):
        Image.fromarray(pixels).save(tmp_path / name, quality=95)
        img = read_image(tmp_path / name)
        assert img.shape == (3, 32, 48)
        assert (img - _as_chw(pixels)).abs().mean() < 2 / 255


def test_grayscale_8_and_16_bit(tmp_path):
    gray8 = np.random.default_rng(1).integers(0, 256, (6, 9), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    ref8 = torch.from_numpy(gray8.astype(np.float64) / 255).float().expand(3, -1, -1)
    torch.testing.assert_close(read_image(tmp_path / "g8.png"), ref8, rtol=0, atol=1e-7)

    # 16-bit values that 8 bits cannot tell apart (0, 1, 255, 256) must stay distinct
    gray16 = np.array([[0, 1, 255, 256], [257, 32768, 65534, 65535]], dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(gray16).save(tmp_path / name)
        with Image.open(tmp_path / name) as check:
            assert check.mode.startswith("I;16")  # the file really is 16-bit
        img = read_image(tmp_path / name)
        ref16 = torch.from_numpy(gray16.astype(np.float64) / 65535).float().expand(3, -1, -1)
        torch.testing.assert_close(img, ref16, rtol=0, atol=1e-7)
        assert len(torch.unique(img[0])) == 8


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.random.default_rng(2).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent and fully opaque pixels
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rgb = torch.from_numpy(rgba[..., :3].astype(np.float64) / 255).permute(2, 0, 1)
    alpha = torch.from_numpy(rgba[..., 3].astype(np.float64) / 255)
    expected = (rgb * alpha + (1 - alpha)).float()
    img = read_image(tmp_path / "a.png")
    torch.testing.assert_close(img, expected, rtol=0, atol=1e-6)
    assert torch.equal(img[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(img[:, 0, 1], rgb[:, 0, 1].float(), rtol=0, atol=1e-7)

    la = rgba[..., [0, 3]]
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    gray, a = torch.from_numpy(la[..., 0] / 255.0), torch.from_numpy(la[..., 1] / 255.0)
    torch.testing.assert_close(read_image(tmp_path / "la.png"), (gray * a + 1 - a).float().expand(3, -1, -1),
                               rtol=0, atol=1e-6)


def test_palette_images_expand_to_their_colours(tmp_path):
    palette = np.random.default_rng(3).integers(0, 256, (4, 3), dtype=np.uint8)
    index = np.random.default_rng(4).integers(0, 4, (6, 5), dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.flatten().tolist())
    img.save(tmp_path / "p.png")
    torch.testing.assert_close(read_image(tmp_path / "p.png"), _as_chw(palette[index]), rtol=0, atol=1e-7)
    # palette index 2 marked transparent: those pixels become white
    img.save(tmp_path / "pt.png", transparency=2)
    expected = _as_chw(palette[index])
    expected[:, torch.from_numpy(index == 2)] = 1.0
    torch.testing.assert_close(read_image(tmp_path / "pt.png"), expected, rtol=0, atol=1e-7)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, 16:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates the stored image 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "o.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "o.jpg")
    assert img.shape == (3, 32, 16)
    assert img[:, :14].mean() < 0.1 and img[:, 18:].mean() > 0.9  # the left half is now on top


def test_unreadable_files_name_themselves(tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg")
    Image.fromarray(_rgb_u8(64, 64)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[:len(data) // 2])
    for name in ("garbage.jpg", "truncated.png"):
        with pytest.raises(ValueError, match=f"cannot read image .*{name}"):
            read_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_write_image_round_trips_and_checks_its_input(tmp_path):
    u8 = torch.from_numpy(_rgb_u8()).permute(2, 0, 1)
    image = u8.float() / 255
    write_image(tmp_path / "w.png", image)
    with Image.open(tmp_path / "w.png") as f:
        assert f.mode == "RGB" and np.array_equal(np.asarray(f), u8.permute(1, 2, 0).numpy())
    write_image(tmp_path / "g.bmp", torch.tensor([[[-1.0, 0.25, 2.0]]]))  # (1, 1, 3), clamped
    with Image.open(tmp_path / "g.bmp") as f:
        assert f.mode == "L" and np.asarray(f).tolist() == [[0, 64, 255]]
    with pytest.raises(ValueError, match=r"image must be a float tensor of shape \(3, H, W\)"):
        write_image(tmp_path / "bad.png", torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"image must be a float tensor"):
        write_image(tmp_path / "bad.png", u8)
    with pytest.raises(ValueError, match="cannot write image .*bad.unknown"):
        write_image(tmp_path / "bad.unknown", image)


def _tree(root):
    """root/b.PNG, root/a.jpg, root/notes.txt, root/sub/c.webp, root/sub/deeper/d.tiff, root/sub/e.bmp"""
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, name in enumerate(["b.PNG", "a.jpg", "sub/c.webp", "sub/deeper/d.tiff", "sub/e.bmp"]):
        Image.fromarray(_rgb_u8(10 + i, 12, seed=i)).save(root / name)
    (root / "notes.txt").write_text("not an image")


def test_list_images_recursive_sorted_case_insensitive(tmp_path):
    _tree(tmp_path)
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tiff", "sub/e.bmp"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.jpg", "b.PNG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="image folder .*empty.* holds no .jpg"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")


def _windows(image, size):
    """Every size x size window of a (3, H, W) image (the reference for a random crop)."""
    h, w = image.shape[-2:]
    return [image[:, t:t + size, s:s + size] for t in range(h - size + 1) for s in range(w - size + 1)]


def test_crops():
    image = torch.rand(3, 9, 13)
    gen = torch.Generator().manual_seed(0)
    crops = [random_crop(image, 5, gen) for _ in range(20)]
    assert all(any(torch.equal(c, win) for win in _windows(image, 5)) for c in crops)
    assert len({tuple(c.flatten()[:3].tolist()) for c in crops}) > 1  # not always the same window
    again = [random_crop(image, 5, torch.Generator().manual_seed(0)) for _ in range(1)]
    assert torch.equal(again[0], crops[0])  # seeded: reproducible
    assert torch.equal(center_crop(image, 5), image[:, 2:7, 4:9])
    assert random_crop(image, None, gen) is image and center_crop(image, None) is image
    # smaller than the crop: scaled up (aspect kept, bilinear) until it covers the crop
    small = torch.rand(3, 4, 6)
    up = torch.nn.functional.interpolate(small[None], size=(8, 12), mode="bilinear", align_corners=False)[0]
    assert torch.equal(center_crop(small, 8), up[:, :, 2:10])
    assert random_crop(small, 8, gen).shape == (3, 8, 8)


def test_image_folder_crops_and_order(tmp_path):
    _tree(tmp_path)
    paths = list_images(tmp_path)
    centre = ImageFolder(tmp_path, crop=8, random_crop=False)
    assert len(centre) == 5
    for i, path in enumerate(paths):
        full = read_image(path)
        assert torch.equal(centre[i], center_crop(full, 8))
    rand = ImageFolder(tmp_path, crop=8, seed=3)
    items = [rand[i] for i in range(5)]
    assert all(any(torch.equal(x, win) for win in _windows(read_image(p), 8)) for x, p in zip(items, paths))
    replay = ImageFolder(tmp_path, crop=8, seed=3)
    assert all(torch.equal(replay[i], x) for i, x in enumerate(items))
    batch = next(iter(torch.utils.data.DataLoader(rand, batch_size=5)))
    assert batch.shape == (5, 3, 8, 8)
    assert ImageFolder(tmp_path, recursive=False)[1].shape == (3, 10, 12)  # the whole of b.PNG
    with pytest.raises(ValueError, match="on_error"):
        ImageFolder(tmp_path, on_error="ignore")
    with pytest.raises(ValueError, match="crop"):
        ImageFolder(tmp_path, crop=0)


def test_image_folder_on_error(tmp_path):
    _tree(tmp_path)
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    paths = list_images(tmp_path)
    bad = [p.name for p in paths].index("broken.jpg")
    strict = ImageFolder(tmp_path, crop=8, random_crop=False)
    with pytest.raises(ValueError, match="broken.jpg"):
        strict[bad]
    lenient = ImageFolder(tmp_path, crop=8, random_crop=False, on_error="warn")
    with pytest.warns(UserWarning, match="broken.jpg"):
        item = lenient[bad]
    assert torch.equal(item, center_crop(read_image(paths[bad + 1]), 8))  # the next readable file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file, not on every visit
        assert torch.equal(lenient[bad], item)
    assert [p.name for p in lenient.unreadable] == ["broken.jpg"]


def test_image_folder_all_unreadable(tmp_path):
    (tmp_path / "a.png").write_bytes(b"no")
    with pytest.warns(UserWarning, match="a.png"), pytest.raises(ValueError, match="no file could be read"):
        ImageFolder(tmp_path, on_error="warn")[0]


def test_sample_photographs():
    skimage_data = pytest.importorskip("skimage.data")
    photos = sample_photographs()
    torch.testing.assert_close(photos[0], _as_chw(skimage_data.astronaut()), rtol=0, atol=1e-7)
    camera = torch.from_numpy(skimage_data.camera() / 255.0).float()
    assert torch.equal(photos[4], camera.expand(3, -1, -1))  # grayscale, replicated
    small = sample_photographs(32)
    assert len(small) == len(photos) >= 5
    assert all(p.shape == (3, 32, 32) and p.dtype == torch.float32 and 0 <= p.min() and p.max() <= 1 for p in small)


def test_sample_photographs_without_scikit_image(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        sample_photographs()


def test_image_folder_workers_draw_their_own_crops(tmp_path):
    pixels = _rgb_u8(40, 40)
    for i in range(4):
        Image.fromarray(pixels).save(tmp_path / f"same{i}.png")
    loader = torch.utils.data.DataLoader(ImageFolder(tmp_path, crop=8), batch_size=1, num_workers=2)
    first, second = [torch.cat(list(loader)) for _ in range(2)]
    # one image four times: copies of one crop generator would give workers 0 and 1 the same crops,
    # and one epoch the same crops as the next
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])
    assert not torch.equal(first, second)
