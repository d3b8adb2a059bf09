"""Generators trained with perceptual losses (written from the papers; see each class)."""
from perfloss.models.autoencoder import ConvAutoencoder
from perfloss.models.sr_net import SuperResolutionNet
from perfloss.models.transform_net import TransformNet

__all__ = ["ConvAutoencoder", "SuperResolutionNet", "TransformNet"]
