"""ResNet-50 v1.5 with torchvision's parameter names, and HSNet's 13-feature extraction."""

from __future__ import annotations

import torch
from torch import nn

#: Bottlenecks per stage of ResNet-50.
RESNET50_LAYERS = (3, 4, 6, 3)
#: HSNet uses the outputs of bottlenecks 4..16 (1-based): all of layer2, layer3 and layer4.
FEATURE_IDS = tuple(range(4, 17))
#: Stage (2, 3 or 4) of each of the 13 features.
FEATURE_LAYERS = (2,) * 4 + (3,) * 6 + (4,) * 3


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits on conv2 (the 3x3)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward_pre_relu(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output after the residual add, before the final ReLU (HSNet's feature)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.forward_pre_relu(x))


class ResNet50(nn.Module):
    """ResNet-50 v1.5, laid out and named exactly like `torchvision.models.resnet50`.

    torchvision has no CPU build on the project's machines, so the network is written here; the
    names (`conv1`, `bn1`, `layer1.0.downsample.0`, ..., `fc`) are torchvision's so that ImageNet
    weights and HSNet checkpoints load unchanged.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, RESNET50_LAYERS[0])
        self.layer2 = self._make_layer(128, RESNET50_LAYERS[1], stride=2)
        self.layer3 = self._make_layer(256, RESNET50_LAYERS[2], stride=2)
        self.layer4 = self._make_layer(512, RESNET50_LAYERS[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * 4, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's initialisation, so the untrained default behaves like a fresh ResNet.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def extract_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """HSNet's 13 features: each layer2-4 bottleneck's output before its final ReLU.

        Args:
            img: normalised images (B, 3, H, W).

        Returns:
            13 tensors: 4 x (B, 512, H/8, W/8), 6 x (B, 1024, H/16, W/16), 3 x (B, 2048, H/32, W/32)
            (sizes rounded up: 400 -> 50, 25, 13).
        """
        feat = self.maxpool(self.relu(self.bn1(self.conv1(img))))
        feats: list[torch.Tensor] = []
        block_id = 0
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                block_id += 1
                pre = block.forward_pre_relu(feat)
                if block_id in FEATURE_IDS:
                    feats.append(pre)
                feat = torch.relu(pre)
        return feats
