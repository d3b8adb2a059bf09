"""The loss a PGN imitates by default, and how a teacher's per-sample gradient is taken."""
import torch

VGG19_RELUS = ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
               "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1")


def paper_teacher(weights=None, input_range=(0.0, 1.0), engine=None):
    """Nikulin et al.'s teacher: VGG-19 up to relu5_1 with average pooling, unweighted sum over the 13
    ReLU outputs of the mean L1 feature distance; ``reduction="sum"`` (per-sample gradients).

    ``weights``: as :func:`perfloss.backbones.get_backbone` (a path, a state dict, ``"imagenet"`` or
    ``None`` = seeded random init, which is not perceptually meaningful). ``engine``: as
    :class:`perfloss.PerceptualLoss` (None lets the loss choose: lean where the backbone allows).
    """
    from perfloss import PerceptualLoss
    from perfloss.backbones import get_backbone

    backbone = get_backbone("vgg19", taps=VGG19_RELUS, weights=weights, pooling="avg")
    kwargs = {} if engine is None else {"engine": engine}
    return PerceptualLoss(backbone=backbone, layers=VGG19_RELUS, distance="l1", reduction="sum",
                          input_range=input_range, **kwargs)


def per_sample_sum(teacher, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the teacher's per-sample losses, so that its gradient with respect to x
    is the per-sample gradient (independent of the batch size).

    A teacher returning shape (N,) is summed; a scalar from a teacher whose ``reduction`` attribute is
    ``"mean"`` is multiplied by N; any other scalar is taken as the sum.
    """
    value = teacher(x, y)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"the teacher must return a tensor, got {type(value).__name__}")
    if value.dim() == 1 and value.shape[0] == x.shape[0]:
        return value.sum()
    if value.dim() != 0:
        raise ValueError(f"the teacher must return a scalar or per-sample (N,) losses, got shape {tuple(value.shape)}")
    if getattr(teacher, "reduction", None) == "mean":
        return value * x.shape[0]
    return value


def teacher_gradient(teacher, y_hat: torch.Tensor, y: torch.Tensor):
    """(per-sample loss sum, d loss / d y_hat) by autograd (the teacher's engine makes this cheap)."""
    x = y_hat.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = per_sample_sum(teacher, x, y.detach())
        (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad
