"""perfloss.models: the generators' shapes, sizes, gradients and argument checks."""
import pytest
import torch

from perfloss.models import SuperResolutionNet, TransformNet


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("height, width", [(5, 5), (16, 16), (33, 20), (64, 48)])
def test_transform_net_keeps_the_input_size_in_unit_range(one_thread, height, width):
    out = TransformNet()(torch.rand(2, 3, height, width))
    assert out.shape == (2, 3, height, width)
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("height, width", [(5, 7), (16, 16)])
def test_sr_net_scales_the_input_by_factor(one_thread, factor, height, width):
    out = SuperResolutionNet(factor)(torch.rand(2, 3, height, width))
    assert out.shape == (2, 3, factor * height, factor * width)
    assert 0 <= out.min() and out.max() <= 1


def conv(in_channels: int, out_channels: int, kernel_size: int) -> int:
    return in_channels * out_channels * kernel_size ** 2 + out_channels


def norm(channels: int) -> int:  # a scale and a shift per channel: affine InstanceNorm and BatchNorm alike
    return 2 * channels


def residual_block(channels: int) -> int:
    return 2 * (conv(channels, channels, 3) + norm(channels))


@pytest.mark.parametrize("norm_kind", ["instance", "batch"])
def test_transform_net_parameter_count_from_the_layer_sizes(norm_kind):
    # c9s1-32, d64, d128, 5 residual blocks at 128, u64, u32, c9s1-3 (every conv but the last normalised)
    expected = (conv(3, 32, 9) + norm(32) + conv(32, 64, 3) + norm(64) + conv(64, 128, 3) + norm(128)
                + 5 * residual_block(128)
                + conv(128, 64, 3) + norm(64) + conv(64, 32, 3) + norm(32) + conv(32, 3, 9))
    assert expected == 1_679_235  # the instance-norm count other implementations of this net report
    assert parameter_count(TransformNet(norm=norm_kind)) == expected
    small = conv(3, 16, 9) + norm(16) + conv(16, 32, 3) + norm(32) + conv(32, 64, 3) + norm(64) \
        + conv(64, 32, 3) + norm(32) + conv(32, 16, 3) + norm(16) + conv(16, 3, 9)
    assert parameter_count(TransformNet(base_channels=16, residual_blocks=0, norm=norm_kind)) == small


@pytest.mark.parametrize("factor, stages", [(2, 1), (4, 2), (8, 3)])
def test_sr_net_parameter_count_from_the_layer_sizes(factor, stages):
    # 9x9 conv to 64, 4 residual blocks, log2(factor) x2 stages (3x3 conv at 64 each), 9x9 conv to 3
    expected = (conv(3, 64, 9) + norm(64) + 4 * residual_block(64)
                + stages * (conv(64, 64, 3) + norm(64)) + conv(64, 3, 9))
    net = SuperResolutionNet(factor)
    assert parameter_count(net) == expected
    assert len(net.upsample) == stages


@pytest.mark.parametrize("norm_kind, layer", [("instance", torch.nn.InstanceNorm2d), ("batch", torch.nn.BatchNorm2d)])
def test_transform_net_norm_option(one_thread, norm_kind, layer):
    net = TransformNet(base_channels=8, residual_blocks=1, norm=norm_kind)
    norms = [m for m in net.modules() if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d))]
    assert len(norms) == 7 and all(type(m) is layer for m in norms)
    # In training mode batch norm mixes the batch's samples; instance norm treats each on its own.
    x = torch.rand(2, 3, 16, 16)
    changed = torch.cat([x[:1], torch.rand(1, 3, 16, 16)])
    same_first = torch.allclose(net(x)[0], net(changed)[0], rtol=0, atol=1e-6)
    assert same_first == (norm_kind == "instance")


@pytest.mark.parametrize("make, side", [(TransformNet, 12), (lambda: SuperResolutionNet(4), 6)])
def test_gradients_reach_every_parameter(one_thread, make, side):
    net = make()
    net(torch.rand(2, 3, side, side)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("make, argument", [
    (lambda: SuperResolutionNet(factor=3), "factor"),
    (lambda: SuperResolutionNet(factor=1), "factor"),
    (lambda: SuperResolutionNet(channels=0), "channels"),
    (lambda: SuperResolutionNet(residual_blocks=-1), "residual_blocks"),
    (lambda: TransformNet(base_channels=0), "base_channels"),
    (lambda: TransformNet(residual_blocks=2.5), "residual_blocks"),
    (lambda: TransformNet(norm="group"), "norm"),
])
def test_bad_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


@pytest.mark.parametrize("net", [TransformNet(), SuperResolutionNet(2)])
@pytest.mark.parametrize("shape", [(1, 3, 4, 16), (1, 1, 16, 16), (3, 16, 16)])
def test_bad_inputs_raise(net, shape):
    with pytest.raises(ValueError, match="input"):
        net(torch.rand(shape))
