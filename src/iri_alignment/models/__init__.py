"""Classifiers that expose their penultimate representation and a fake-ReLU option.

Every model takes images in [0, 1] and normalises them inside::

    model = build_model("cifar10", "resnet18", width=0.5).eval()
    logits = model(x)                                   # (N, classes)
    logits, rep = model(x, with_rep=True, fake_relu=True)
    rep = model.represent(x)                            # (N, model.rep_dim)
"""

from .base import FakeReLU, ImageClassifier, ModelWeightsError, load_weights_file
from .registry import ARCHITECTURES, build_model, describe_model

__all__ = [
    "ARCHITECTURES",
    "FakeReLU",
    "ImageClassifier",
    "ModelWeightsError",
    "build_model",
    "describe_model",
    "load_weights_file",
]
