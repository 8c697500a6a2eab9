"""Training the localiser: augmentation, the heatmap loss, fitting the two networks on training stacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from radiospine import vocab
from radiospine.config import LocalizerAugment, LocalizerConfig
from radiospine.device import deterministic_torch, resolve_device
from radiospine.errors import DataError
from radiospine.geometry import patient_to_voxel, pixel_spacing
from radiospine.roi.localizer.data import TrainingStack
from radiospine.roi.localizer.grids import AXIAL_CHANNELS, SAGITTAL_CHANNELS, Kind, heatmap_targets, stack_inputs
from radiospine.roi.localizer.model import DEVICE_KEY, Localizer
from radiospine.roi.localizer.unet import UNet, UNetSpec

log = logging.getLogger(__name__)


def augment(x: torch.Tensor, y: torch.Tensor, kind: Kind, generator: torch.Generator, settings: LocalizerAugment,
            pixel_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch of grid inputs ``(b, c_in, h, w)`` (intensities in ``[0, 1]``) and targets ``(b, c_out, h,
    w)``, each sample with its own draws (``settings``, :class:`~radiospine.config.LocalizerAugment`).

    Geometry, applied alike to inputs and targets (one affine resampling, so the points move with the image):
    rotation, scale, shift, and for axial slices a left-right mirror with the side channels swapped. Intensity,
    on the inputs only, in this order: a random transfer curve (``intensity_curve`` of the samples: 5 knots
    drawn uniform in ``[0, 1]`` and joined linearly, so tissues can change their order of brightness as between
    sequences and scanners), a smooth multiplicative bias field (``exp`` of a random 4 x 4 grid in
    ``[-bias_field, bias_field]`` upsampled bicubically), a Gaussian blur of sigma up to ``blur_mm`` (``pixel_mm``
    per grid pixel), then gamma, contrast and additive noise. A setting of 0 draws nothing, so the default
    settings give the same batches as before they existed.
    """
    b = x.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(b) * np.deg2rad(settings.rotation_deg)
    scale = 1 + uniform(b) * settings.scale
    shift = uniform(b, 2) * settings.shift
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / scale, -torch.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / scale, torch.cos(angle) / scale
    theta[:, :, 2] = shift
    flip = torch.zeros(b, dtype=torch.bool)
    if kind == "axial":
        flip = torch.rand(b, generator=generator) < 0.5
        theta[flip, :, 0] *= -1  # sample the input mirrored left-right
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, F.affine_grid(theta, list(y.shape), align_corners=False), mode="bilinear",
                      padding_mode="zeros", align_corners=False)
    if flip.any():
        y[flip.to(y.device)] = y[flip.to(y.device)].flip(1)  # the mirrored left point is the right one
    x = x.clamp(0, 1)
    if settings.intensity_curve > 0:
        x = _random_curve(x, torch.rand(b, generator=generator) < settings.intensity_curve, generator)
    if settings.bias_field > 0:
        coarse = (uniform(b, 1, 4, 4) * settings.bias_field).to(x.device)
        x = x * torch.exp(F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=True))
    if settings.blur_mm > 0:
        x = _random_blur(x, torch.rand(b, generator=generator) * settings.blur_mm / pixel_mm)
    gamma = torch.exp(uniform(b) * settings.gamma).view(b, 1, 1, 1).to(x.device)
    contrast = (1 + uniform(b) * settings.contrast).view(b, 1, 1, 1).to(x.device)
    noise = torch.randn(x.shape, generator=generator).to(x.device) * settings.noise_sd
    return (x.clamp(0, 1) ** gamma * contrast + noise), y


def _random_curve(x: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator, knots: int = 5) -> torch.Tensor:
    """``(b, c, h, w)`` intensities in ``[0, 1]`` of the ``chosen`` samples through a random piecewise-linear curve
    (``knots`` values drawn uniform in ``[0, 1]`` at equal steps; the same curve for a sample's channels)."""
    values = torch.rand(x.shape[0], knots, generator=generator).to(x.device)
    position = x * (knots - 1)
    low = position.floor().clamp(max=knots - 2).long()
    fraction = position - low
    flat_low = low.reshape(x.shape[0], -1)
    start = torch.gather(values, 1, flat_low).view_as(x)
    stop = torch.gather(values, 1, flat_low + 1).view_as(x)
    curved = start + (stop - start) * fraction
    return torch.where(chosen.to(x.device).view(-1, 1, 1, 1), curved, x)


def _random_blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """``(b, c, h, w)`` each sample blurred by a Gaussian of its own ``sigma_px`` (pixels; below 0.3 unchanged)."""
    out = x.clone()
    for i, sigma in enumerate(sigma_px.tolist()):
        if sigma < 0.3:
            continue
        radius = int(np.ceil(3 * sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-offsets**2 / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        channels = x.shape[1]
        sample = x[i:i + 1]
        sample = F.conv2d(F.pad(sample, (radius, radius, 0, 0), mode="replicate"),
                          kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
        sample = F.conv2d(F.pad(sample, (0, 0, radius, radius), mode="replicate"),
                          kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
        out[i:i + 1] = sample
    return out


def heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Quality focal loss (GFL, Li et al. 2020) for soft heatmap targets, ``(b, c, h, w)`` each.

    Binary cross-entropy weighted by ``|target - p| ** 2``, so the mass of easy background pixels stops drowning
    the few peak pixels, summed and divided by the target mass (about the number of peak pixels). Its optimum
    is still ``p = target``, so a peak's height keeps saying how close the slice is to the point.
    """
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = (target - probability).abs().pow(2)
    return (weight * cross_entropy).sum() / target.sum().clamp(min=1.0)


def fit_network(stacks: Sequence[TrainingStack], kind: Kind, config: LocalizerConfig, device: torch.device,
                samples_per_stack: int) -> tuple[UNet, list[float]]:
    """Train one heatmap U-Net on the stacks of its kind; returns the network (eval mode) and the epoch losses."""
    stacks = [stack for stack in stacks if stack.kind == kind]
    if not stacks:
        raise DataError(f"no {kind} training slices: the training studies have no readable series with labels")
    n_out = len(SAGITTAL_CHANNELS) if kind == "sagittal" else len(AXIAL_CHANNELS)
    size = stacks[0].images.shape[1]
    pixel_mm = config.sagittal_grid_mm if kind == "sagittal" else config.axial_grid_mm
    spec = UNetSpec(in_channels=2 * config.neighbour_slices + 1, out_channels=n_out,
                    base_channels=config.base_channels, depth=config.depth)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = UNet(spec).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = int(np.ceil(len(stacks) * samples_per_stack / config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate, pct_start=0.15,
                                                   total_steps=config.epochs * steps_per_epoch)
    history = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        draws = [(i, int(k)) for i, stack in enumerate(stacks)
                 for k in rng.choice(len(stack.weights), size=samples_per_stack, p=stack.weights / stack.weights.sum())]
        order = rng.permutation(len(draws))
        net.train()
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = [draws[j] for j in order[start:start + config.batch_size]]
            if len(batch) < 2:
                continue  # batch norm needs two samples
            x = torch.from_numpy(np.stack([stack_inputs(stacks[i].images, [k], config.neighbour_slices)[0]
                                           for i, k in batch])).to(device)
            y = torch.from_numpy(np.stack([
                heatmap_targets(stacks[i].grid, k, size, stacks[i].points_lps, config.sigma_mm,
                                config.sigma_normal_mm) for i, k in batch])).to(device)
            x, y = augment(x, y, kind, generator, config.augment, pixel_mm)
            loss = heatmap_loss(net(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        history.append(total / max(count, 1))
        log.info("%s localiser epoch %d/%d: loss %.5f (%d slices, %.1f s)", kind, epoch + 1, config.epochs,
                 history[-1], count, time.perf_counter() - started)
    net.eval()
    return net, history


def subarticular_offsets(stacks: Sequence[TrainingStack]) -> dict[str, list[float]]:
    """Mean in-plane offset ``[rows, cols]`` in mm of each side's subarticular point from the axial grid centre
    (where the canal crosses the slice), over the axial training slabs: the fallback for a too weak peak."""
    offsets: dict[str, list[np.ndarray]] = {condition: [] for condition in AXIAL_CHANNELS}
    for stack in stacks:
        if stack.kind != "axial":
            continue
        middle = (stack.images.shape[1] - 1) / 2
        pixel_mm = pixel_spacing(stack.grid)[1]
        for channel, condition in enumerate(AXIAL_CHANNELS):
            point = stack.points_lps[channel, 0]
            if np.isfinite(point).all():
                _, row, col = patient_to_voxel(stack.grid, point[None, :])[0]
                offsets[condition].append((np.array([row, col]) - middle) * pixel_mm)
    return {condition: (np.mean(values, axis=0).tolist() if values else [0.0, 0.0])
            for condition, values in offsets.items()}


def untrained_targets(stacks: Sequence[TrainingStack]) -> list[str]:
    """The localiser's targets that the training stacks hold no point of, in order: ``"foraminal"`` (no foraminal
    point on any sagittal stack; the sagittal network's foraminal channels learn nothing) and ``"axial"`` (no axial
    slab: the axial network is not trained). A data folder with only sagittal T2 series and canal points (SPIDER)
    has both."""
    untrained = []
    if not any(stack.kind == "sagittal" and np.isfinite(stack.points_lps[len(vocab.LEVELS):]).any()
               for stack in stacks):
        untrained.append("foraminal")
    if not any(stack.kind == "axial" for stack in stacks):
        untrained.append("axial")
    return untrained


def fit_localizer(stacks: Sequence[TrainingStack], config: LocalizerConfig) -> tuple[Localizer, dict]:
    """Train both networks; returns the localiser and a training log (losses and seconds per network).

    Without axial training slabs (a data folder without Axial T2 series) the axial network is not trained: the
    log says so under ``axial.skipped`` and the localiser's :attr:`~Localizer.untrained` names it, so inference
    records the subarticular points as missing with the reason. Without sagittal training stacks there is
    nothing to localise from (:class:`~radiospine.errors.DataError`).
    """
    device = resolve_device(config.device, DEVICE_KEY)
    untrained = untrained_targets(stacks)
    report: dict = {"device": str(device), "untrained": untrained}
    nets: dict[str, UNet | None] = {"axial": None}
    for kind, samples in (("sagittal", config.sagittal_slices_per_epoch), ("axial", config.axial_slices_per_epoch)):
        if kind == "axial" and "axial" in untrained:
            report[kind] = {"skipped": "no Axial T2 series with subarticular points among the training studies",
                            "stacks": 0}
            log.warning("axial localiser not trained: %s; subarticular points will be missing",
                        report[kind]["skipped"])
            continue
        started = time.perf_counter()
        with deterministic_torch(device):
            nets[kind], losses = fit_network(stacks, kind, config, device, samples)
        report[kind] = {"losses": losses, "seconds": round(time.perf_counter() - started, 1),
                        "stacks": sum(stack.kind == kind for stack in stacks)}
    if "foraminal" in untrained:
        log.warning("no foraminal training points (no Sagittal T1 labels): foraminal points will be missing")
    return Localizer(nets["sagittal"], nets["axial"], config, subarticular_offsets(stacks), device,
                     tuple(untrained)), report
