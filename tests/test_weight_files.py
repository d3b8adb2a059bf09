"""Weight files are verified: torchvision-named files against the sha256 prefix in their name (once per
file), unreadable and truncated files named in the error, downloads time out and never leave a
partial file under the final name. No network: downloads come from file:// URLs or a stand-in opener."""
import hashlib
import io
import os
import socket
import urllib.request
import warnings

import pytest
import torch

from perfloss.backbones import get_backbone
from perfloss.backbones import weights as weights_mod
from perfloss.losses.lpips import load_lin_weights


def alexnet_state(seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        sd = get_backbone("alexnet", weights=None).state_dict()
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in sd.items()}


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def saved_with_hash_name(tmp_path, sd, stem="alexnet-owt"):
    """sd saved under torchvision's naming rule: <stem>-<first 8 hex digits of its sha256>.pth."""
    plain = tmp_path / "plain.pth"
    torch.save(sd, plain)
    path = tmp_path / f"{stem}-{sha256(plain)[:8]}.pth"
    os.replace(plain, path)
    return path


def test_hash_prefix_of_names():
    assert weights_mod.hash_prefix_of("vgg16-397923af.pth") == "397923af"
    assert weights_mod.hash_prefix_of("/a/b/alexnet-owt-7be5be79.pth") == "7be5be79"
    assert weights_mod.hash_prefix_of("my_vgg.pth") is None
    assert weights_mod.hash_prefix_of("run-20240101.pth") is None  # a date, not a hash
    assert weights_mod.hash_prefix_of("net-abc.pth") is None  # too short to be torchvision's


def test_matching_file_loads_and_is_hashed_once(tmp_path, monkeypatch):
    sd = alexnet_state()
    path = saved_with_hash_name(tmp_path, sd)
    calls = []
    real = weights_mod._sha256
    monkeypatch.setattr(weights_mod, "_sha256", lambda p: calls.append(p) or real(p))
    for _ in range(2):
        b = get_backbone("alexnet", weights=str(path))
        assert torch.equal(b.state_dict()["features.3.weight"], sd["features.3.weight"])
    assert len(calls) == 1
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    get_backbone("alexnet", weights=str(path))
    assert len(calls) == 2


def test_corrupted_file_with_hash_name_is_an_error(tmp_path):
    path = saved_with_hash_name(tmp_path, alexnet_state())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: torch.load alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        get_backbone("alexnet", weights=str(path))
    msg = str(err.value)
    assert str(path) in msg and "corrupt or truncated" in msg
    assert sha256(path)[:8] in msg and path.name[-12:-4] in msg


def test_corrupt_imagenet_file_in_the_hub_is_an_error(tmp_path, monkeypatch):
    """The issue's case: a broken vgg16-397923af.pth in $TORCH_HOME/hub/checkpoints."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    directory = tmp_path / "hub" / "checkpoints"
    directory.mkdir(parents=True)
    torch.save(alexnet_state(), directory / "alexnet-owt-7be5be79.pth")  # not torchvision's bytes
    with pytest.raises(ValueError, match="alexnet-owt-7be5be79.pth' is corrupt or truncated"):
        get_backbone("alexnet", weights="imagenet")


def test_truncated_files_say_truncated(tmp_path):
    sd = alexnet_state()
    for name, legacy in (("zip.pth", False), ("legacy.pth", True)):
        path = tmp_path / name
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=f"weights file '{path}' is truncated"):
            get_backbone("alexnet", weights=str(path))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is truncated \\(0 bytes\\)"):
        get_backbone("alexnet", weights=str(empty))


def test_unreadable_files_are_named(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=f"'{junk}' is not a file torch.load can read"):
        weights_mod.load_file(junk)
    with pytest.raises(ValueError, match=f"'{tmp_path}' cannot be read"):  # a folder
        weights_mod.load_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        weights_mod.load_file(tmp_path / "missing.pth")


def test_lpips_lin_weights_file_is_named(tmp_path):
    path = tmp_path / "lin.pth"
    torch.save({f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate((4, 5))}, path)
    assert [w.tolist() for w in load_lin_weights(str(path), "alex", "0.1", [4, 5])] == [[1.0] * 4, [1.0] * 5]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"lin_weights file '{path}' is truncated"):
        load_lin_weights(str(path), "alex", "0.1", [4, 5])


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A torchvision-named alexnet file served from a file:// URL root, and an empty hub."""
    sd = alexnet_state(seed=1)
    server = tmp_path / "server"
    server.mkdir()
    path = saved_with_hash_name(server, sd)
    monkeypatch.setattr(weights_mod, "URL_ROOT", server.as_uri() + "/")
    monkeypatch.setitem(weights_mod.IMAGENET_FILES, "alexnet", path.name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return sd, path, tmp_path / "hub" / "checkpoints"


def test_download_from_file_url(served):
    sd, source, directory = served
    b = get_backbone("alexnet", weights="imagenet")
    assert torch.equal(b.state_dict()["features.0.weight"], sd["features.0.weight"])
    assert sorted(os.listdir(directory)) == [source.name]
    assert (directory / source.name).read_bytes() == source.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(directory / source.name).st_mode & 0o777 == 0o666 & ~umask  # as torch.save's files


def test_download_with_wrong_hash_leaves_nothing(served):
    _, source, directory = served
    data = bytearray(source.read_bytes())
    data[-100] ^= 0xFF
    source.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError, match="is corrupt: sha256"):
        get_backbone("alexnet", weights="imagenet")
    assert os.listdir(directory) == []


class Response(io.BytesIO):
    """What urlopen returns, serving ``data`` but announcing ``length`` bytes; ``fail_after``: raise a
    socket timeout once that many bytes were read."""

    def __init__(self, data, length, fail_after=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(length)}
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise socket.timeout("timed out")
        return super().read(n if self.fail_after is None else min(n, self.fail_after - self.tell()))


@pytest.mark.parametrize("failure", ["short", "timeout"])
def test_interrupted_download_leaves_nothing(served, monkeypatch, failure):
    _, source, directory = served
    data = source.read_bytes()
    opened = []

    def opener(url, timeout=None):
        opened.append((url, timeout))
        if failure == "short":  # the connection closed early
            return Response(data[: len(data) // 2], len(data))
        return Response(data, len(data), fail_after=len(data) // 3)

    monkeypatch.setattr(urllib.request, "urlopen", opener)
    with pytest.raises(FileNotFoundError, match="truncated" if failure == "short" else "timed out"):
        get_backbone("alexnet", weights="imagenet")
    assert opened == [(weights_mod.URL_ROOT + source.name, weights_mod.DOWNLOAD_TIMEOUT_S)]
    assert os.listdir(directory) == []
