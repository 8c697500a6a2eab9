"""Training the localiser: augmentation, the heatmap loss, fitting the two networks on training stacks.

Every epoch draws the same number of training slices (``localizer.*_samples_per_epoch``), whatever the number of
studies, so an epoch's time is fixed; held-out studies decide when to stop (``localizer.validation_fraction``,
``localizer.patience``). The slices are read from the slice cache (:class:`radiospine.roi.localizer.data.SliceCache`).
"""

from __future__ import annotations

import copy
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


def held_out_studies(study_ids: Sequence[int], fraction: float, seed: int) -> set[int]:
    """The studies held out for early stopping: ``fraction`` of them (at least one, never all; none with fewer
    than two studies or a zero fraction), drawn with ``seed``; every stack of a study falls on the same side."""
    ids = sorted({int(study_id) for study_id in study_ids})
    if fraction <= 0 or len(ids) < 2:
        return set()
    count = min(max(int(round(fraction * len(ids))), 1), len(ids) - 1)
    return {int(study_id) for study_id in np.random.default_rng(seed).choice(ids, size=count, replace=False)}


def draw_samples(stacks: Sequence[TrainingStack], budget: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``budget`` training centres ``(stack index, slice index)``, whatever the number of stacks.

    The stacks are visited in rounds, each round in a fresh random order, so every stack is drawn as often as
    the others (to within one) when the budget exceeds their number and a random subset of them when it does
    not; each draw's slice follows the stack's sampling weights (:attr:`TrainingStack.weights`).
    """
    rounds = -(-budget // len(stacks))
    order = np.concatenate([rng.permutation(len(stacks)) for _ in range(rounds)])[:budget]
    return [(int(i), int(rng.choice(len(stacks[i].weights), p=stacks[i].weights / stacks[i].weights.sum())))
            for i in order]


def batch_tensors(stacks: Sequence[TrainingStack], batch: Sequence[tuple[int, int]], config: LocalizerConfig,
                  size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(b, 2n+1, size, size)`` and target heatmaps ``(b, channels, size, size)`` of ``(stack, slice)``
    draws, the images read from the slice cache."""
    x = np.stack([stack_inputs(stacks[i].images(), [k], config.neighbour_slices)[0] for i, k in batch])
    y = np.stack([heatmap_targets(stacks[i].grid, k, size, stacks[i].points_lps, config.sigma_mm,
                                  config.sigma_normal_mm) for i, k in batch])
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def held_out_scores(net: UNet, stacks: Sequence[TrainingStack], draws: Sequence[tuple[int, int]],
                    config: LocalizerConfig, size: int, pixel_mm: float, device: torch.device
                    ) -> tuple[float, float | None]:
    """The network's mean heatmap loss on held-out draws (no augmentation) and the median in-plane distance in mm
    between the predicted and the target maximum of every channel whose target peaks at 0.5 or more on the slice
    (None without such a channel)."""
    net.eval()
    total, errors = 0.0, []
    with torch.no_grad():
        for start in range(0, len(draws), config.batch_size):
            batch = draws[start:start + config.batch_size]
            x, y = batch_tensors(stacks, batch, config, size, device)
            logits = net(x)
            total += float(heatmap_loss(logits, y)) * len(batch)
            present = y.flatten(2).amax(dim=2) >= 0.5
            if present.any():
                predicted = logits.flatten(2).argmax(dim=2)[present]
                target = y.flatten(2).argmax(dim=2)[present]
                rows = (predicted // size - target // size).double()
                cols = (predicted % size - target % size).double()
                errors.extend((torch.sqrt(rows**2 + cols**2) * pixel_mm).tolist())
    return total / len(draws), (float(np.median(errors)) if errors else None)


def fit_network(stacks: Sequence[TrainingStack], held_out: Sequence[TrainingStack], kind: Kind,
                config: LocalizerConfig, device: torch.device, samples_per_epoch: int) -> tuple[UNet, dict]:
    """Train one heatmap U-Net on the training stacks of its kind, ``samples_per_epoch`` slices per epoch
    (:func:`draw_samples`), for at most ``config.epochs`` epochs.

    With held-out stacks of its kind, ``config.validation_samples`` held-out slices are drawn once and scored
    after every epoch (:func:`held_out_scores`); training stops after ``config.patience`` epochs without a lower
    held-out loss and the network keeps the weights of its best epoch. Without them it runs every epoch.

    Returns:
        The network (eval mode) and its log: per epoch ``losses`` (training) and ``held_out_losses`` /
        ``held_out_error_mm``, the chosen ``epoch`` (1-based) with its ``held_out_loss`` and
        ``held_out_error_mm_median``, and the stack counts.
    """
    stacks = [stack for stack in stacks if stack.kind == kind]
    held_out = [stack for stack in held_out if stack.kind == kind]
    if not stacks:
        raise DataError(f"no {kind} training slices: the training studies have no readable series with labels")
    n_out = len(SAGITTAL_CHANNELS) if kind == "sagittal" else len(AXIAL_CHANNELS)
    size, pixel_mm = ((config.sagittal_grid_px, config.sagittal_grid_mm) if kind == "sagittal"
                      else (config.axial_grid_px, config.axial_grid_mm))
    spec = UNetSpec(in_channels=2 * config.neighbour_slices + 1, out_channels=n_out,
                    base_channels=config.base_channels, depth=config.depth)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    validation = draw_samples(held_out, config.validation_samples,
                              np.random.default_rng(config.seed + 1)) if held_out else []
    net = UNet(spec).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = -(-samples_per_epoch // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate, pct_start=0.15,
                                                   total_steps=config.epochs * steps_per_epoch)
    log_entries: dict = {"losses": [], "held_out_losses": [], "held_out_error_mm": []}
    best_epoch, best_loss, best_state = 0, float("inf"), None
    for epoch in range(config.epochs):
        started = time.perf_counter()
        draws = draw_samples(stacks, samples_per_epoch, rng)
        net.train()
        total, count = 0.0, 0
        for start in range(0, len(draws), config.batch_size):
            batch = draws[start:start + config.batch_size]
            if len(batch) < 2:
                continue  # batch norm needs two samples
            x, y = batch_tensors(stacks, batch, config, size, device)
            x, y = augment(x, y, kind, generator, config.augment, pixel_mm)
            loss = heatmap_loss(net(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        log_entries["losses"].append(total / max(count, 1))
        message = ""
        if validation:
            held_loss, error = held_out_scores(net, held_out, validation, config, size, pixel_mm, device)
            log_entries["held_out_losses"].append(held_loss)
            log_entries["held_out_error_mm"].append(error)
            peak = "no target peak on its slices" if error is None else f"median peak error {error:.1f} mm"
            message = f", held out {held_loss:.5f} ({peak})"
            if held_loss < best_loss:
                best_epoch, best_loss, best_state = epoch + 1, held_loss, copy.deepcopy(net.state_dict())
        log.info("%s localiser epoch %d/%d: loss %.5f%s (%d slices, %.1f s)", kind, epoch + 1, config.epochs,
                 log_entries["losses"][-1], message, count, time.perf_counter() - started)
        if validation and epoch + 1 - best_epoch >= config.patience:
            log.info("%s localiser: no lower held-out loss for %d epochs, stopping; epoch %d kept", kind,
                     config.patience, best_epoch)
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        best_epoch = len(log_entries["losses"])
    log_entries.update(epoch=best_epoch, stacks=len(stacks), held_out_stacks=len(held_out),
                       held_out_loss=log_entries["held_out_losses"][best_epoch - 1] if validation else None,
                       held_out_error_mm_median=log_entries["held_out_error_mm"][best_epoch - 1] if validation
                       else None)
    net.eval()
    return net, log_entries


def subarticular_offsets(stacks: Sequence[TrainingStack], size: int) -> dict[str, list[float]]:
    """Mean in-plane offset ``[rows, cols]`` in mm of each side's subarticular point from the axial grid centre
    (where the canal crosses the slice), over the axial training slabs of ``size`` px grids: the fallback for a
    too weak peak."""
    offsets: dict[str, list[np.ndarray]] = {condition: [] for condition in AXIAL_CHANNELS}
    for stack in stacks:
        if stack.kind != "axial":
            continue
        middle = (size - 1) / 2
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
    """Train both networks: ``config.validation_fraction`` of the studies held out for early stopping
    (:func:`held_out_studies`), the networks trained on the others (a network whose kind of stack only held-out
    studies have is trained on every study, without early stopping). The subarticular offsets use every study.

    Without axial training slabs (a data folder without Axial T2 series) the axial network is not trained: the
    log says so under ``axial.skipped`` and the localiser's :attr:`~Localizer.untrained` names it, so inference
    records the subarticular points as missing with the reason. Without sagittal training stacks there is
    nothing to localise from (:class:`~radiospine.errors.DataError`).

    Returns:
        The localiser and a training log: the device, the untrained targets, the held-out study count and per
        network its :func:`fit_network` log with the seconds it took.
    """
    device = resolve_device(config.device, DEVICE_KEY)
    untrained = untrained_targets(stacks)
    held = held_out_studies([stack.study_id for stack in stacks], config.validation_fraction, config.seed)
    training = [stack for stack in stacks if stack.study_id not in held]
    held_out = [stack for stack in stacks if stack.study_id in held]
    report: dict = {"device": str(device), "untrained": untrained, "held_out_studies": len(held)}
    nets: dict[str, UNet | None] = {"axial": None}
    for kind, samples in (("sagittal", config.sagittal_samples_per_epoch), ("axial", config.axial_samples_per_epoch)):
        if kind == "axial" and "axial" in untrained:
            report[kind] = {"skipped": "no Axial T2 series with subarticular points among the training studies",
                            "stacks": 0}
            log.warning("axial localiser not trained: %s; subarticular points will be missing",
                        report[kind]["skipped"])
            continue
        started = time.perf_counter()
        fit_on, scored_on = training, held_out
        if not any(stack.kind == kind for stack in training):
            fit_on, scored_on = stacks, []  # only held-out studies have this kind: train on them, every epoch
        with deterministic_torch(device):
            nets[kind], report[kind] = fit_network(fit_on, scored_on, kind, config, device, samples)
        report[kind]["seconds"] = round(time.perf_counter() - started, 1)
    if "foraminal" in untrained:
        log.warning("no foraminal training points (no Sagittal T1 labels): foraminal points will be missing")
    offsets = subarticular_offsets(stacks, config.axial_grid_px)
    return Localizer(nets["sagittal"], nets["axial"], config, offsets, device, tuple(untrained)), report
