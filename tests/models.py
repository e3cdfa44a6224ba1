"""Tiny models shared by the engine tests."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class TinyCNN(nn.Module):
    """conv -> BN -> ReLU -> conv -> ReLU (``features``) -> GAP -> Linear: CAM applies."""

    def __init__(self, channels: int = 8, num_classes: int = 5, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, channels, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


class NonlinearHead(nn.Module):
    """A head with max-pool, functional ReLU, a reused ReLU module and a gate product."""

    def __init__(self, channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.gate = nn.Linear(channels, channels)
        self.fc1 = nn.Linear(channels * 4, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        z = self.relu(self.conv(a)) + a
        z = F.max_pool2d(z, 2)
        gate = torch.sigmoid(self.gate(z.mean(dim=(2, 3))))[:, :, None, None]
        z = z * gate
        z = F.adaptive_avg_pool2d(z, 2).flatten(1)
        return self.fc2(self.relu(self.fc1(z)))


class Untraceable(TinyCNN):
    """Same computation as TinyCNN, but data-dependent control flow defeats torch.fx."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        if a.sum() > -1e30:  # always true, but fx cannot know
            a = a * 1.0
        return self.fc(self.dropout(torch.flatten(self.pool(a), 1)))
