"""perfloss::sign_pack and sign_unpack in every implementation: the round trip is eager's product bit
for bit."""
import torch
import pytest

from op_helpers import check_running
from perfloss.ops.sign_pack import sign_pack, sign_unpack

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 4, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sign_pack_roundtrip_is_exact(impl, shape, channels_last, dtype):
    check_running("sign_pack", impl)
    scale = torch.tensor(1.0, dtype=dtype) / (shape[1] * shape[2] * shape[3]) * 0.7
    g = torch.sign(torch.randint(-1, 2, shape).to(dtype)) * scale
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    codes = sign_pack(g)
    assert codes.numel() == (g.numel() + 3) // 4
    gv = torch.randn(shape[0])
    got = sign_unpack(codes, g.abs().amax(), gv, g.shape, channels_last and shape[1] > 1)
    expected = gv.to(dtype).view(-1, 1, 1, 1) * g
    if impl == "triton" and dtype == torch.bfloat16:
        torch.testing.assert_close(got, expected)  # the interpreter rounds bf16 stores differently
    else:
        assert torch.equal(got, expected)


def test_fake_kernel_gives_the_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(3, 4, 7, 10)
        assert sign_pack(x).shape == ((x.numel() + 3) // 4,)


def test_opcheck(impl):
    g = torch.sign(torch.randn(2, 3, 6, 5))
    torch.library.opcheck(torch.ops.perfloss.sign_pack, (g,))
    torch.library.opcheck(torch.ops.perfloss.sign_unpack, (sign_pack(g), torch.tensor(0.5), torch.randn(2),
                                                           [2, 3, 6, 5], False))
