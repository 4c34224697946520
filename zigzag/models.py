"""The networks of the paper, sized by a width multiplier.

- ``cnn``: the paper's simple CNN, three convolution blocks and one fully connected layer
  (channels 32-64-128 at width 1).
- ``vgg16``: VGG-16 with batch normalization (Simonyan & Zisserman, 2015) in its common CIFAR form
  with a single linear head, as in Kuang Liu's "pytorch-cifar" repository.
- ``resnet18``, ``resnet34``: the CIFAR ResNets with basic blocks (He et al., 2016) as in
  "pytorch-cifar": a 3x3 stem without max-pooling, four stages, 1x1 convolution shortcuts.

Every channel count ``c`` becomes ``max(1, round(c * width))``. Parameters get PyTorch's default
initialisation, so ``torch.manual_seed`` before ``build_model`` fixes them exactly.

Any other network is an import path ``"package.module:factory"`` (zigzag/modelimport.py), called by
``build_custom`` as ``factory(num_classes=..., in_channels=..., image_size=..., **model_args)``.
"""

import torch
from torch import nn

from zigzag.errors import ZigzagError
from zigzag.modelimport import check_model_name, import_factory, is_custom

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _pooled_size(image_size: int, n_pools: int, name: str) -> int:
    size = image_size
    for _ in range(n_pools):
        size //= 2
    if size < 1:
        raise ZigzagError(
            f"image_size {image_size} is too small for {name}: its {n_pools} 2x2 max-pools need "
            f"at least {2 ** n_pools} pixels per side"
        )
    return size


def _cnn(width, in_channels, image_size, num_classes, batch_norm):
    side = _pooled_size(image_size, 3, "cnn")
    layers = []
    channels = in_channels
    for c in (32, 64, 128):
        out = _scaled(c, width)
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = out
    layers += [nn.Flatten(), nn.Linear(channels * side * side, num_classes)]
    return nn.Sequential(*layers)


def _vgg16(width, in_channels, image_size, num_classes):
    # The convolutions keep their bias, as in pytorch-cifar (this gives its 14,728,266 parameters).
    side = _pooled_size(image_size, 5, "vgg16")
    layers = []
    channels = in_channels
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = _scaled(item, width)
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, padding=1),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    layers += [nn.Flatten(), nn.Linear(channels * side * side, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an identity or 1x1 conv-BN shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, four stages of basic blocks, global average pool, linear head."""

    def __init__(self, blocks, width, in_channels, num_classes):
        super().__init__()
        channels = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        stages = []
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            out = _scaled(c, width)
            stage = []
            for j in range(n):
                stage.append(BasicBlock(channels, out, stride=2 if i > 0 and j == 0 else 1))
                channels = out
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.layers(out))
        return self.linear(torch.flatten(out, 1))


def build_custom(name: str, *, in_channels: int, image_size: int, num_classes: int,
                 model_args: dict | None = None) -> nn.Module:
    """The network of import path ``name``: ``factory(num_classes=, in_channels=, image_size=, **model_args)``,
    checked to be an ``nn.Module`` with a parameter that requires a gradient."""
    factory = import_factory(name)
    model = factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **(model_args or {}))
    if not isinstance(model, nn.Module):
        raise ZigzagError(f"model {name}: the factory returned a {type(model).__name__}, not a torch nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ZigzagError(f"model {name}: no parameter requires a gradient, so there is nothing to train")
    return model


def check_output(name: str, model: nn.Module, images: torch.Tensor, num_classes: int) -> None:
    """One line unless ``model`` maps ``images`` to logits of shape (batch, num_classes) (a tensor or an
    object with ``.logits``); run in eval mode without gradients, so no statistic or random stream moves."""
    from zigzag.losses import logits

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(images)
    finally:
        model.train(training)
    out = logits(output) if isinstance(output, torch.Tensor) or hasattr(output, "logits") else None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (len(images), num_classes):
        got = f"shape {shape}" if shape is not None else f"a {type(output).__name__} (neither a tensor nor .logits)"
        raise ZigzagError(f"model {name}: output of a batch of {len(images)} must have shape (batch, num_classes) = "
                          f"({len(images)}, {num_classes}), got {got}")


def build_model(
    name: str,
    *,
    width: float = 1.0,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    batch_norm: bool = True,
) -> nn.Module:
    """Build model ``name`` (one of ``MODELS``) for square ``image_size`` inputs.

    ``width`` scales every channel count. ``batch_norm`` is honoured only by ``cnn``: ``vgg16`` and
    the ResNets always use batch normalization. Raises ZigzagError on an unknown name, a
    non-positive width or size, or an image too small for the architecture's poolings.
    """
    check_model_name(name)
    if is_custom(name):
        raise ZigzagError(f"model {name} is an import path: build it with build_custom")
    if not width > 0:
        raise ZigzagError(f"model width must be > 0, got {width}")
    for label, value in (("in_channels", in_channels), ("image_size", image_size),
                         ("num_classes", num_classes)):
        if value < 1:
            raise ZigzagError(f"{label} must be >= 1, got {value}")
    if name == "cnn":
        return _cnn(width, in_channels, image_size, num_classes, batch_norm)
    if name == "vgg16":
        return _vgg16(width, in_channels, image_size, num_classes)
    return ResNet(_RESNET_BLOCKS[name], width, in_channels, num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (entries of tensors with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether the built model holds a BatchNorm layer (any ``_BatchNorm``), whatever its name."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batch_norm_semantics(model: nn.Module, micro_batch: int) -> str:
    """What g_k is for this model, in words: the one-giant-batch gradient, or one over ghost batches."""
    if not has_batch_norm(model):
        return "no batch normalisation: g_k equals the one-giant-batch gradient"
    return (f"ghost batches: BatchNorm in train mode normalises each micro-batch of {micro_batch} by its own "
            f"statistics; running statistics updated once per micro-batch")
