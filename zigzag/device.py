"""The training device: choosing it, putting the dataset on it, and checking that a run fits in its memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zigzag import store
from zigzag.errors import ZigzagError
from zigzag.modelimport import is_custom
from zigzag.models import build_custom, build_model, check_output, count_parameters, has_batch_norm
from zigzag.runchoices import NCV_COLD
from zigzag.runconfig import RunConfig


@dataclass
class DeviceData:
    """Normalised float32 images and int64 labels, resident on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    dataset_config: dict


def resolve_device(name: str, gpu: int | None = None) -> torch.device:
    """The training device; on CUDA, pinned to GPU ``gpu`` when a lease chose one (zigzag/gpulease.py)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ZigzagError("device=cuda but no CUDA GPU is visible; use device auto or cpu")
    if name == "cuda" and gpu is not None:
        torch.cuda.set_device(gpu)
        return torch.device("cuda", gpu)
    return torch.device(name)


def load_data(path: str, device: torch.device, channels_last: bool = False) -> DeviceData:
    """The prepared dataset at ``path`` on ``device``: uint8 images as (x / 255 - mean) / std per channel, float
    images (and vectors) as stored, in float32; images in channels_last memory layout if asked (the values and
    shapes are the same)."""
    arrays = store.read_dataset(path)
    if arrays.train_images.dtype != np.uint8:
        def images(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device).float()
    else:
        mean = torch.tensor(arrays.mean, dtype=torch.float32, device=device)
        std = torch.tensor(arrays.std, dtype=torch.float32, device=device)
        shape = (1, -1, 1, 1) if arrays.train_images.ndim == 4 else (1, 1)  # vectors: one channel
        mean, std = mean.view(shape), std.view(shape)

        def images(a: np.ndarray) -> torch.Tensor:
            return (torch.from_numpy(a).to(device).float().div_(255.0) - mean) / std

    def laid_out(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x.contiguous()

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return DeviceData(laid_out(images(arrays.train_images)), labels(arrays.train_labels),
                      laid_out(images(arrays.test_images)), labels(arrays.test_labels),
                      arrays.num_classes, arrays.config)


def available_memory() -> int:
    """Bytes of RAM the kernel can hand out without swapping (MemAvailable), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(config: RunConfig, n_params: int, device: torch.device, failed: bool = False) -> None:
    """One line, before anything is allocated, if the model and its lag ring cannot fit in the device's
    available memory (or, ``failed``, because an allocation failed).

    Per parameter a run keeps at least, in float32, the parameter, its gradient, the momentum buffer and the
    lag ring's lags + 1 gradients, and the Lanczos basis in float64 when sharpness is
    recorded; activations come on top.
    """
    per_param = 4 * (2 + (config.momentum > 0)) + (config.lags + 1) * 4
    if config.sharpness_setting("every") != "none":
        per_param += 8 * ((config.sharpness_setting("ncv") or NCV_COLD) + 1)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    if n_params * per_param > free or failed:
        need = n_params * per_param / 2**30
        available = f"{free / 2**30:,.1f} GiB available"
        raise ZigzagError(f"invalid width={config.width:g} or lags={config.lags}: the {config.model} at width "
                          f"{config.width:g} has {n_params:,} parameters; with its gradient and a lag ring of lags + 1 "
                          f"= {config.lags + 1} gradients it needs {need:,.1f} GiB, but {device.type} "
                          + (f"could not allocate it ({available})" if failed else f"has {available}")
                          + "; lower width or lags")


PERTURBATION_STREAM = 0x5EED  # the second word of the perturbation generator's seed, after the run's seed


def perturb(model: nn.Module, eps: float, seed: int) -> None:
    """Perturb every parameter tensor p, in ``model.parameters()`` order, by p += eps * |p| * z (elementwise),
    z ~ N(0, 1) in float32 on the CPU from ``numpy.random.Generator(PCG64(SeedSequence([seed,
    PERTURBATION_STREAM])))`` drawn for one tensor after the other; the sum is rounded to the parameter's dtype
    (so a relative eps below float32's 6e-8 changes an entry by at most one unit in the last place)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, PERTURBATION_STREAM])))
    with torch.no_grad():
        for p in model.parameters():
            z = torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32)).to(p.device)
            p.add_(eps * p.abs() * z)


def build_on_device(config: RunConfig, data: DeviceData, device: torch.device, channels_last: bool) -> nn.Module:
    """The run's model for ``data``, initialised from ``config.seed``, on ``device`` in train mode, once
    ``check_memory`` says it fits; on a CPU with ``channels_last`` its weights in that layout (the gradient
    views the recorder makes keep the default one); with ``init_perturbation`` eps > 0 the initial weights
    perturbed by ``perturb`` (eps 0 leaves them, and every random stream, untouched). A ``package.module:factory``
    model is built once (its factory may not run on the meta device), checked (``check_output`` on two training
    images) and then measured."""
    shape = data.train_x.shape
    vectors = len(shape) == 2  # (N, D): D "channels" of a 1 x 1 image, so in_channels * image_size^2 = D
    args = dict(in_channels=shape[1], image_size=1 if vectors else shape[2], num_classes=data.num_classes)
    if is_custom(config.model):
        torch.manual_seed(config.seed)
        model = build_custom(config.model, **args, model_args=config.model_args)
        check_memory(config, count_parameters(model), device)
        model = model.to(device)
        check_output(config.model, model, data.train_x[:2], data.num_classes)
    else:
        if vectors:
            raise ZigzagError(f"model {config.model} takes images N x C x H x W, but dataset {config.dataset} holds "
                              f"vectors {tuple(shape)}; train a model that takes (batch, D) vectors on it")
        args.update(width=config.width, batch_norm=config.batch_norm)
        with torch.device("meta"):  # shapes only: the parameters are counted before anything is allocated
            check_memory(config, count_parameters(build_model(config.model, **args)), device)
        torch.manual_seed(config.seed)
        model = build_model(config.model, **args).to(device)
    config.check_sharpness_subset(has_batch_norm(model))
    if config.init_perturbation > 0:
        perturb(model, config.init_perturbation, config.seed)
    if channels_last and device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model.train()
