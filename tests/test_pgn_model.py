import pytest
import torch

from perfloss.pgn import PerceptualGradientNetwork, ProxyTargetLoss, fold


pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)


def conv(cin, cout, k=3, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def expected_resnet(n):
    stem = conv(6, 64) + bn(64)
    down = conv(64, 128) + bn(128)
    block = 2 * (conv(128, 128) + bn(128))
    up = conv(128, 64) + bn(64)
    out = conv(64, 3, bias=True)
    return stem + down + n * block + up + out


def expected_unet():
    def level(cin, c):
        return conv(cin, c) + bn(c) + conv(c, c) + bn(c)
    enc = level(6, 32) + level(32, 64) + level(64, 128)
    mid = level(128, 256)
    dec = 0
    for cin, c in ((256, 128), (128, 64), (64, 32)):
        dec += conv(cin, c) + bn(c) + level(2 * c, c)
    return enc + mid + dec + conv(32, 3, bias=True)


@pytest.mark.parametrize("arch, expected", [
    ("resnet4", expected_resnet(4)), ("resnet6", expected_resnet(6)), ("resnet8", expected_resnet(8)),
    ("unet", expected_unet()),
])
def test_shapes_and_parameter_counts(arch, expected):
    net = PerceptualGradientNetwork(arch)
    assert sum(p.numel() for p in net.parameters()) == expected
    for shape in ((2, 3, 16, 16), (2, 3, 13, 10)):
        proxy, grad = net(torch.rand(shape), torch.rand(shape))
        assert proxy.shape == shape and grad.shape == shape


def test_paper_parameter_counts_are_close():
    counts = {a: sum(p.numel() for p in PerceptualGradientNetwork(a).parameters()) for a in ("resnet4", "resnet6", "resnet8")}
    for arch, paper in (("resnet4", 1.3e6), ("resnet6", 1.9e6), ("resnet8", 2.5e6)):
        assert abs(counts[arch] - paper) / paper < 0.03


def test_sigmoid_output_formula():
    torch.manual_seed(0)
    net = PerceptualGradientNetwork("resnet4", grad_scale=0.05).eval()
    y_hat, y = torch.rand(2, 3, 8, 12), torch.rand(2, 3, 8, 12)
    proxy, grad = net(y_hat, y)
    x = torch.cat([y_hat, y], 1)
    std = torch.tensor([0.229, 0.224, 0.225] * 2).view(1, 6, 1, 1)
    out = net.body((x - MEAN.repeat(1, 2, 1, 1)) / std)
    # p = 1.1 * normalize(sigmoid(out)) in normalised space, mapped back to [0, 1] space
    p_norm = 1.1 * (torch.sigmoid(out) - MEAN) / std[:, :3]
    p_expected = p_norm * std[:, :3] + MEAN
    torch.testing.assert_close(proxy, p_expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, 2 * (y_hat - p_expected) / (3 * 8 * 12 * 0.05), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("output", ["raw", "direct"])
def test_other_outputs_keep_the_proxy_gradient_relation(output):
    net = PerceptualGradientNetwork("resnet4", output=output, input_range=(-1, 1)).eval()
    y_hat, y = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8) * 2 - 1
    proxy, grad = net(y_hat, y)
    torch.testing.assert_close(proxy, y_hat - (0.025 * 3 * 8 * 8 / 2) * grad, rtol=1e-5, atol=1e-5)


def test_proxy_target_loss_gradient_equals_pgn_gradient():
    net = PerceptualGradientNetwork("resnet4")
    loss_fn = ProxyTargetLoss(net)
    y = torch.rand(2, 3, 16, 16)
    y_hat = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss = loss_fn(y_hat, y)
    loss.backward()
    _, g = net(y_hat.detach(), y)
    assert torch.equal(y_hat.grad, g)
    assert all(p.grad is None for p in net.parameters())
    assert not net.training
    proxy = loss_fn.last_proxy
    expected = ((y_hat.detach() - proxy) ** 2).flatten(1).mean(1).sum() / net.grad_scale
    torch.testing.assert_close(loss.detach(), expected)
    # a generator upstream receives J^T g
    lin = torch.nn.Conv2d(3, 3, 1)
    z = torch.rand(2, 3, 16, 16)
    ProxyTargetLoss(net, reduction="mean")(lin(z), y).backward()
    out = lin(z)
    _, g2 = net(out.detach(), y)
    (ref,) = torch.autograd.grad(out, lin.weight, g2 / 2)
    torch.testing.assert_close(lin.weight.grad, ref)


def test_save_load_roundtrip(tmp_path):
    net = PerceptualGradientNetwork("unet", output="direct", input_range=(-1, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    path = tmp_path / "pgn.pt"
    net.save(path, step=3)
    loaded = PerceptualGradientNetwork.load(path)
    assert loaded.config() == net.config() and loaded.checkpoint_extra == {"step": 3}
    y_hat, y = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    for a, b in zip(net.eval()(y_hat, y), loaded.eval()(y_hat, y)):
        assert torch.equal(a, b)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a perfloss PGN checkpoint"):
        PerceptualGradientNetwork.load(tmp_path / "other.pt")


def test_load_checkpoint_written_with_head_key(tmp_path):
    """Checkpoints from before the rename carry the output parameterisation under "head"."""
    net = PerceptualGradientNetwork("resnet4", output="raw")
    net.save(tmp_path / "new.pt")
    ckpt = torch.load(tmp_path / "new.pt", weights_only=True)
    ckpt["config"]["head"] = ckpt["config"].pop("output")
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = PerceptualGradientNetwork.load(tmp_path / "old.pt")
    assert loaded.output == "raw" and loaded.config() == net.config()
    y_hat, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    for a, b in zip(net.eval()(y_hat, y), loaded.eval()(y_hat, y)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call, err, match", [
    (lambda: PerceptualGradientNetwork("resnet5"), ValueError, "arch must be one of"),
    (lambda: PerceptualGradientNetwork(output="tanh"), ValueError, "output must be one of"),
    (lambda: PerceptualGradientNetwork(grad_scale=-1.0), ValueError, "grad_scale"),
    (lambda: PerceptualGradientNetwork(input_range=(1, 0)), ValueError, "input_range"),
])
def test_bad_config_raises(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_bad_forward_inputs_raise():
    net = PerceptualGradientNetwork("resnet4")
    with pytest.raises(ValueError, match=r"y_hat must have shape \(N, 3, H, W\)"):
        net(torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="y_hat and y must have the same shape"):
        net(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(TypeError, match="y_hat and y must have the same dtype"):
        net(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="y_hat must be a floating"):
        net(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="reduction"):
        ProxyTargetLoss(net, reduction="avg")


def test_proxy_target_loss_with_the_inference_copy():
    net = PerceptualGradientNetwork("resnet4").eval()
    fast = fold(net)
    y, y_hat = torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12, requires_grad=True)
    ProxyTargetLoss(fast)(y_hat, y).backward()
    assert torch.equal(y_hat.grad, fast(y_hat.detach(), y)[1])
    with torch.no_grad():
        torch.testing.assert_close(y_hat.grad, net(y_hat.detach(), y)[1], rtol=1e-5, atol=1e-8)


def test_grad_scale_auto_calibrates_to_the_teacher_scale(tmp_path):
    torch.manual_seed(0)
    net = PerceptualGradientNetwork("resnet4", grad_scale="auto")
    assert not net.calibrated and net.config()["grad_scale"] == "auto"
    y_hat, y = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    with pytest.raises(RuntimeError, match="not calibrated"):
        net(y_hat, y)
    with pytest.raises(RuntimeError, match="not calibrated"):
        fold(net)
    net.save(tmp_path / "auto.pt")
    assert not PerceptualGradientNetwork.load(tmp_path / "auto.pt").calibrated
    g_true = torch.randn(3, 3, 8, 8) * 1e-4
    s = net.calibrate_grad_scale(y_hat, y, g_true)
    d = (y_hat - y).double()
    assert s == pytest.approx(float(2 * d.norm() / (3 * 8 * 8 * g_true.double().norm())), rel=1e-12)
    assert net.calibrated and net.grad_scale == s and net.config()["grad_scale"] == s
    # the pixel difference read as a proxy residual now has the teacher gradient's (pooled) norm
    g_pix = 2 * (y_hat - y) / (3 * 8 * 8 * s)
    torch.testing.assert_close(g_pix.norm(), g_true.norm(), rtol=1e-5, atol=0)
    proxy, grad = net.eval()(y_hat, y)
    torch.testing.assert_close(grad, 2 * (y_hat - proxy) / (3 * 8 * 8 * s), rtol=1e-5, atol=1e-9)
    net.save(tmp_path / "cal.pt")
    loaded = PerceptualGradientNetwork.load(tmp_path / "cal.pt")
    assert loaded.calibrated and loaded.grad_scale == s
    torch.testing.assert_close(fold(net)(y_hat, y)[1], grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="cannot calibrate"):
        net.calibrate_grad_scale(y, y, g_true)
    with pytest.raises(ValueError, match="grad_scale"):
        PerceptualGradientNetwork(grad_scale="fixed")
