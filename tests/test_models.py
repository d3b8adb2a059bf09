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


def test_parameter_counts():
    # TransformNet: the count of the widely used instance-norm variant of Johnson et al.'s net.
    assert parameter_count(TransformNet()) == 1_679_235
    # Each x2 stage adds one 3x3 conv at 64 channels and its norm: 64 * 64 * 9 + 64 + 2 * 64.
    assert [parameter_count(SuperResolutionNet(f)) for f in (2, 4, 8)] == [364_803, 401_859, 438_915]
    assert parameter_count(TransformNet(base_channels=16, residual_blocks=0)) < parameter_count(TransformNet())


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
])
def test_bad_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


@pytest.mark.parametrize("net", [TransformNet(), SuperResolutionNet(2)])
@pytest.mark.parametrize("shape", [(1, 3, 4, 16), (1, 1, 16, 16), (3, 16, 16)])
def test_bad_inputs_raise(net, shape):
    with pytest.raises(ValueError, match="input"):
        net(torch.rand(shape))
