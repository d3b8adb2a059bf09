"""Protocol ``autoencoder``: train an autoencoder with a loss, then ask how well a linear classifier reads
the class off its codes (Pihlgren et al. 2023's dimensionality-reduction use case, on SVHN and STL-10).

For each loss a :class:`perfloss.models.autoencoder.ConvAutoencoder` starts from the same initialisation
(seeded) and trains ``steps`` Adam steps on the same batches of the training images (classes ignored),
reconstructing them under the loss. Its encoder, frozen, then codes every training and test image; a
linear probe (:mod:`perfloss.evaluate.probe`) is fitted on the training codes and their classes, and
its accuracy on the test codes is the result. Images are read once, scaled and centre-cropped to
``size`` x ``size``, and kept as uint8.
"""
from typing import Dict, List, NamedTuple

import torch
from tqdm import tqdm

from perfloss.evaluate.folders import as_float, class_folders, read_all
from perfloss.evaluate.probe import fit_linear_probe
from perfloss.models.autoencoder import ConvAutoencoder

NAME = "autoencoder"
METRICS = {"accuracy": "linear-probe accuracy"}
DEFAULT_SIZE = 32  # SVHN's side


class Data(NamedTuple):
    train: torch.Tensor  # uint8 (N, 3, size, size)
    train_labels: torch.Tensor  # int64 (N,)
    test: torch.Tensor
    test_labels: torch.Tensor
    classes: List[str]


def load(settings) -> Data:
    train, test = class_folders(settings.train), class_folders(settings.test)
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"test folder {str(settings.test)!r} has classes the training folder "
                         f"{str(settings.train)!r} lacks: {', '.join(unknown)}")
    index = {name: k for k, name in enumerate(train.classes)}  # test labels in the training set's numbering
    test_labels = [index[test.classes[label]] for label in test.labels]
    return Data(read_all(train.paths, settings.size), torch.tensor(train.labels),
                read_all(test.paths, settings.size), torch.tensor(test_labels), train.classes)


def encode_all(net: ConvAutoencoder, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net.encode(as_float(images[k:k + batch_size]).to(device))
                          for k in range(0, len(images), batch_size)])


def run(config, data: Data, settings, progress: bool = True) -> Dict[str, float]:
    device = torch.device(settings.device)
    loss_fn = config.loss(settings.loss_weights(config.network)).to(device)
    torch.manual_seed(settings.seed)
    net = ConvAutoencoder(settings.size, settings.code_size).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    loss = None
    for step in tqdm(range(1, settings.steps + 1), desc=f"autoencoder {config.key}", unit="step", leave=False,
                     disable=not progress):
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)  # the same batches per loss
        picks = torch.randint(len(data.train), (settings.batch_size,), generator=generator)
        images = as_float(data.train[picks]).to(device)
        loss = loss_fn(net(images), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"autoencoder {config.key}: the loss is {loss.item()} at step {step}; lower "
                                     f"the lr")
    net.eval()
    train_codes = encode_all(net, data.train, settings.batch_size, device)
    probe = fit_linear_probe(train_codes, data.train_labels, len(data.classes))
    return {"accuracy": probe.accuracy(encode_all(net, data.test, settings.batch_size, device), data.test_labels),
            "train_accuracy": probe.accuracy(train_codes, data.train_labels),
            "final_loss": loss.item(), "classes": len(data.classes)}
