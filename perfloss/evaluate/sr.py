"""Protocol ``sr``: train Johnson et al.'s super-resolution network with a loss, then measure PSNR and SSIM.

For each loss a :class:`perfloss.models.SuperResolutionNet` starts from the same initialisation (seeded)
and trains ``steps`` Adam steps on the same batches: random ``size`` x ``size`` crops of the training
folder's images, the input being each crop degraded as in the paper (Gaussian blur, sigma 1, then
antialiased bicubic downsampling by ``factor``). Then every test image, whole (cropped to a multiple of
``factor``), is degraded and restored, and compared with the original: PSNR and SSIM from
scikit-image (RGB in [0, 1]), averaged over the test images; plain bicubic upsampling's PSNR and SSIM
are given beside them as the baseline a trained network should beat.
"""
import math
import pathlib
from typing import Dict, List, NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from perfloss.evaluate.folders import existing_folder
from perfloss.images import list_images, random_crop, read_image
from perfloss.models import SuperResolutionNet

NAME = "sr"
METRICS = {"psnr": "PSNR (dB)", "ssim": "SSIM"}
DEFAULT_SIZE = 96  # training crop side (the paper: 288), a multiple of every factor
BLUR_SIGMA = 1.0  # the paper's blur before downsampling, in high-resolution pixels


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) batch: kernel radius ceil(3 sigma), reflected borders."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def low_resolution(images: torch.Tensor, factor: int, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Johnson et al.'s degradation: Gaussian blur, then antialiased bicubic downsampling by ``factor``."""
    blurred = gaussian_blur(images, sigma) if sigma > 0 else images
    size = (images.shape[-2] // factor, images.shape[-1] // factor)
    return F.interpolate(blurred, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def bicubic_upsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    size = (images.shape[-2] * factor, images.shape[-1] * factor)
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def psnr_ssim(output: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """Mean PSNR (dB) and SSIM over a batch of RGB images in [0, 1], by scikit-image."""
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as e:
        raise ImportError("the sr protocol measures SSIM with scikit-image: pip install perfloss[evaluate]") from e
    psnr, ssim = [], []
    for out, ref in zip(output.detach().double().cpu().numpy(), target.detach().double().cpu().numpy()):
        psnr.append(float(peak_signal_noise_ratio(ref, out, data_range=1.0)))
        ssim.append(float(structural_similarity(ref, out, data_range=1.0, channel_axis=0)))
    return {"psnr": sum(psnr) / len(psnr), "ssim": sum(ssim) / len(ssim)}


class Data(NamedTuple):
    train: List[pathlib.Path]  # read batch by batch: a training set need not fit in memory
    test: List[torch.Tensor]  # float32 (3, H, W), H and W multiples of the factor


def load(settings) -> Data:
    """The training images' paths and the test images."""
    train = list_images(existing_folder(settings.train, "training image"))
    test = []
    smallest = 5 * settings.factor  # the network's 9x9 reflection padding needs 5 low-resolution pixels
    for path in list_images(existing_folder(settings.test, "test image")):
        image = read_image(path)
        h, w = (side - side % settings.factor for side in image.shape[-2:])
        if min(h, w) < smallest:
            raise ValueError(f"test image {str(path)!r} is {tuple(image.shape[-2:])}: x{settings.factor} "
                             f"super-resolution needs sides of at least {smallest}")
        test.append(image[:, :h, :w])
    return Data(train, test)


def train_batch(paths: List[pathlib.Path], step: int, size: int, batch_size: int, seed: int) -> torch.Tensor:
    """Step ``step``'s batch: images drawn with replacement, a random ``size`` crop of each, all from a
    generator seeded by (seed, step), so every loss trains on the same crops."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    picks = torch.randint(len(paths), (batch_size,), generator=generator).tolist()
    return torch.stack([random_crop(read_image(paths[i]), size, generator) for i in picks])


def run(config, data: Data, settings, progress: bool = True) -> Dict[str, float]:
    device = torch.device(settings.device)
    loss_fn = config.loss(settings.loss_weights(config.network)).to(device)
    torch.manual_seed(settings.seed)
    net = SuperResolutionNet(settings.factor).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    for step in tqdm(range(1, settings.steps + 1), desc=f"sr {config.key}", unit="step", leave=False,
                     disable=not progress):
        target = train_batch(data.train, step, settings.size, settings.batch_size, settings.seed).to(device)
        loss = loss_fn(net(low_resolution(target, settings.factor)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"sr {config.key}: the loss is {value} at step {step}; lower the lr")
    net.eval()
    measured = {"psnr": [], "ssim": [], "bicubic_psnr": [], "bicubic_ssim": []}
    with torch.no_grad():
        for image in data.test:
            target = image[None].to(device)
            small = low_resolution(target, settings.factor)
            for prefix, output in (("", net(small)), ("bicubic_", bicubic_upsample(small, settings.factor))):
                for name, value in psnr_ssim(output, target).items():
                    measured[prefix + name].append(value)
    return {**{name: sum(v) / len(v) for name, v in measured.items()}, "final_loss": value}
