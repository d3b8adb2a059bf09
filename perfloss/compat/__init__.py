"""Drop-in forms of the losses people already use, backed by perfloss.

One module per peer, each class with the peer's constructor, defaults, input range, return type and
shape: change the import, nothing else. Each also takes perfloss's ``weights=`` (the backbone's
torchvision-format state dict or path; ``"imagenet"`` by default) so that it runs offline.
Arguments perfloss cannot honour raise a ``ValueError`` naming them.

- :mod:`perfloss.compat.lpips`: ``LPIPS`` (lpips 0.1.4)
- :mod:`perfloss.compat.basicsr`: ``PerceptualLoss`` (BasicSR 1.4)
- :mod:`perfloss.compat.piq`: ``ContentLoss``, ``StyleLoss``, ``LPIPS``, ``DISTS`` (piq 0.8)
- :mod:`perfloss.compat.dists_pytorch`: ``DISTS`` (dists-pytorch 0.1)
- :mod:`perfloss.compat.torchmetrics`: ``LearnedPerceptualImagePatchSimilarity`` (needs torchmetrics)

Modules are imported on use (``import perfloss.compat.lpips``), so this package imports no peer.
"""
