import pytest
import torch

from perfloss.pgn.proxy import proxy_regression, proxy_target


pytestmark = pytest.mark.usefixtures("one_thread")


def test_proxy_regression_gradient_is_step_times_grad_float64():
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    step = 0.37
    loss = proxy_regression(x, proxy_target(x, g, step), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, step * g, rtol=0, atol=1e-6)


def test_proxy_target_per_sample_step_and_detached():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    step = torch.tensor([0.5, 2.0], dtype=torch.float64).view(2, 1, 1, 1)
    t = proxy_target(x, g, step)
    assert not t.requires_grad
    (grad,) = torch.autograd.grad(proxy_regression(x, t, reduction="sum"), x)
    torch.testing.assert_close(grad, step * g, rtol=0, atol=1e-12)


def test_proxy_regression_value_and_reductions():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    t = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    per = torch.stack([0.5 * ((x[i] - t[i]) ** 2).sum() for i in range(4)])
    torch.testing.assert_close(proxy_regression(x, t, reduction="none"), per)
    torch.testing.assert_close(proxy_regression(x, t, reduction="sum"), per.sum())
    torch.testing.assert_close(proxy_regression(x, t), per.mean())


def test_proxy_regression_stops_gradient_into_target():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    proxy_regression(x, t).backward()
    assert t.grad is None and x.grad is not None


@pytest.mark.parametrize("call, match", [
    (lambda: proxy_regression(torch.zeros(2, 3), torch.zeros(2, 4)), "x and target must have the same shape"),
    (lambda: proxy_regression(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)), "x and target must have the same dtype"),
    (lambda: proxy_regression(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), "x must be a floating"),
    (lambda: proxy_regression([1.0], torch.zeros(1)), "x must be a torch.Tensor"),
    (lambda: proxy_regression(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg"), "reduction must be one of"),
    (lambda: proxy_target(torch.zeros(2, 3), torch.zeros(3, 2), 1.0), "x and grad must have the same shape"),
    (lambda: proxy_target(torch.zeros(2, 3), torch.zeros(2, 3), "big"), "step must be"),
    (lambda: proxy_target(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 1)), "does not broadcast"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
