"""A small 2D U-Net for heatmap regression, written in plain torch (no torchvision / timm on these machines).

Input ``(batch, in_channels, h, w)`` -> logits ``(batch, out_channels, h, w)`` at the input resolution;
``h`` and ``w`` must be multiples of ``2 ** depth``. The architecture is fully described by :class:`UNetSpec`,
which is saved as JSON beside the weights so a model can be rebuilt without pickles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Initial bias of the output logits (a background prior, as in RetinaNet), so training starts from "no peak".
HEAD_BIAS = -4.0


@dataclass(frozen=True)
class UNetSpec:
    """The architecture: channels in and out, width at full resolution (doubling per level), down-sampling steps."""

    in_channels: int
    out_channels: int
    base_channels: int = 16
    depth: int = 4

    def to_json(self) -> dict:
        return asdict(self)


class _DoubleConv(nn.Sequential):
    """(3x3 conv -> batch norm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Encoder of ``depth`` max-pool steps, decoder with bilinear up-sampling and skip connections, 1x1 head."""

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.base_channels * 2**level for level in range(spec.depth + 1)]
        self.encoder = nn.ModuleList(
            [_DoubleConv(spec.in_channels, widths[0])]
            + [_DoubleConv(widths[level], widths[level + 1]) for level in range(spec.depth)])
        self.decoder = nn.ModuleList(
            [_DoubleConv(widths[level + 1] + widths[level], widths[level]) for level in reversed(range(spec.depth))])
        self.head = nn.Conv2d(widths[0], spec.out_channels, 1)
        # heatmaps are almost all background: start every pixel at p = sigmoid(-4) ~ 0.02 rather than 0.5
        nn.init.constant_(self.head.bias, HEAD_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, in_channels, h, w)`` -> logits ``(b, out_channels, h, w)``."""
        multiple = 2**self.spec.depth
        if x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(f"U-Net input {tuple(x.shape[-2:])} must be a multiple of 2**depth = {multiple}")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
