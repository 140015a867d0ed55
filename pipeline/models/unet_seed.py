"""The seed report's U-Net (its Figure 3): one pooling level, no skip connection, 365,761 parameters.

Figure 3 lists, in torchinfo order:
  encoder  = [conv3x3 1->64, ReLU, conv3x3 64->64, ReLU], MaxPool2d(2)
  middle   = conv3x3 64->128, ReLU, conv3x3 128->128, ReLU
  decoder  = ConvTranspose2d 128->64 (2x2, stride 2), [conv3x3 64->64, ReLU, conv3x3 64->64, ReLU],
             conv1x1 64->1
The parameter counts (640, 36,928, 73,856, 147,584, 32,832, 36,928, 36,928, 65) pin every shape:
the first decoder conv takes 64 channels, so the encoder features are not concatenated back.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


class SeedUnet(nn.Module):
    def __init__(self, in_chans: int = 1, out_chans: int = 1):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Sequential(_conv(in_chans, 64), nn.ReLU(inplace=True), _conv(64, 64), nn.ReLU(inplace=True)),
            nn.MaxPool2d(2),
        )
        self.middle = nn.Sequential(_conv(64, 128), nn.ReLU(inplace=True), _conv(128, 128), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 64, kernel_size=2, stride=2),
            nn.Sequential(_conv(64, 64), nn.ReLU(inplace=True), _conv(64, 64), nn.ReLU(inplace=True)),
            nn.Conv2d(64, out_chans, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"SeedUnet needs even image sizes, got {h}x{w}")
        return self.decoder(self.middle(self.encoder(x)))
