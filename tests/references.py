"""Independent plain-PyTorch references for the losses: written from the papers' formulas and
the networks' published layer lists, sharing no code with perfloss (only state dicts)."""
import torch
import torch.nn.functional as F

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


def imagenet_normalize(x, input_range=(0, 1)):
    lo, hi = input_range
    x01 = (x - lo) / (hi - lo)
    return (x01 - MEAN.to(x)) / STD.to(x)


def vgg16_features(state, x):
    """All relu{b}_{i} outputs of VGG-16 computed from a torchvision-format state dict."""
    out, idx, block, conv = {}, 0, 1, 1
    for v in VGG16_CFG:
        if v == "M":
            x = F.max_pool2d(x, 2, 2)
            idx += 1
            block, conv = block + 1, 1
            continue
        if f"features.{idx}.weight" not in state:  # truncated network
            break
        x = F.relu(F.conv2d(x, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"], padding=1))
        out[f"relu{block}_{conv}"] = x
        idx += 2
        conv += 1
    return out


def alexnet_features(state, x):
    spec = [(0, 4, 2, True), (3, 1, 2, True), (6, 1, 1, False), (8, 1, 1, False), (10, 1, 1, False)]
    out = {}
    for n, (i, stride, pad, pool_after) in enumerate(spec, 1):
        if f"features.{i}.weight" not in state:  # truncated network
            break
        x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], stride=stride, padding=pad))
        out[f"relu{n}"] = x
        if pool_after:
            x = F.max_pool2d(x, 3, 2)
    return out


def gram(f):
    b, c, h, w = f.shape
    m = f.reshape(b, c, h * w)
    return m @ m.transpose(1, 2) / (c * h * w)


def lpips_reference(feats0, feats1, lins, eps=1e-10):
    """The lpips package's formula: eps outside the square root."""
    total = 0
    for f0, f1, lin in zip(feats0, feats1, lins):
        n0 = f0 / (torch.sqrt((f0 ** 2).sum(1, keepdim=True)) + eps)
        n1 = f1 / (torch.sqrt((f1 ** 2).sum(1, keepdim=True)) + eps)
        total = total + F.conv2d((n0 - n1) ** 2, lin).mean(dim=(2, 3)).view(-1)
    return total


def tv_reference(x, kind):
    dh = x[:, :, 1:] - x[:, :, :-1]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    p = (lambda d: d.abs()) if kind == "l1" else (lambda d: d ** 2)
    return p(dh).mean(dim=(1, 2, 3)) + p(dw).mean(dim=(1, 2, 3))
