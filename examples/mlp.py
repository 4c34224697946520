"""A small multilayer perceptron, as a model factory: ``model: "examples.mlp:mlp"``."""

from torch import nn


def mlp(num_classes, in_channels, image_size, hidden=64):
    """Flatten, then Linear-ReLU-Linear-ReLU-Linear. zigzag passes N x D vectors as ``in_channels`` = D and
    ``image_size`` = 1; ``hidden`` comes from the run's ``model_args``."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
