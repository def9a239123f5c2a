"""Encoder f (torchvision ResNet blocks, optional small-image stem) and the BYOL MLP heads g and q.

The encoder carries its own input normalisation as buffers, so the exported ONNX graph holds the only copy of
mean/std: it takes float RGB in [0, 1] (NCHW) and returns the pooled representation (fc removed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.tv import import_torchvision

_tv = import_torchvision()
BasicBlock = _tv.models.resnet.BasicBlock
Bottleneck = _tv.models.resnet.Bottleneck

ARCHS = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
STEMS = ("imagenet", "small", "small-s2")
POOLS = ("avg", "grid2", "grid4", "grid2+s3", "multi")
INPUT_NORMS = ("dataset", "image")
IMAGE_NORM_EPS = 0.02  # a flat image (RMS contrast ~0) is not blown up into noise


@dataclass
class EncoderConfig:
    """Everything needed to rebuild f from a state dict (saved with every checkpoint and encoder file).

    ``stem``: 'imagenet' (7×7/2 conv + max-pool), 'small' (3×3/1 conv, no pool: the CIFAR stem for 28–64 px),
    'small-s2' (3×3/2 conv, no pool: a quarter of 'small''s compute, for CPU demos). ``width`` is the first
    stage's channel count (64 in the paper's ResNets). ``pool`` is what f returns: 'avg' (the paper: the last
    stage's global average, ``8 × width × expansion`` values), 'grid2' (the last stage averaged to a 2×2 grid and
    flattened, 4× as many: where in the image a feature fired — small centred images like Fashion-MNIST's carry
    class information in their layout), 'grid4' (a 4×4 grid of the last stage, for stride-1 stems whose last maps
    are that large), 'grid2+s3' (the 2×2 grid of the last stage beside the 4×4 map of the third, each part unit
    norm), 'multi' (the global averages of the last three stages side by side). ``bench/recipe_ablation.py``
    measured them for the CPU demo (the preset's docstring says what won). ``input_norm``: 'dataset' (the paper:
    the data set's mean/std) or 'image' (each image's own: every channel centred on its mean, all scaled by the
    image's RMS contrast — an exposure or colour cast then changes nothing; ``training.folder``'s CPU presets).
    """

    arch: str = "resnet50"
    stem: str = "imagenet"
    width: int = 64
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pool: str = "avg"
    input_norm: str = "dataset"

    def __post_init__(self) -> None:
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown encoder input_norm {self.input_norm!r}; choose from {', '.join(INPUT_NORMS)}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown encoder pool {self.pool!r}; choose from {', '.join(POOLS)}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown encoder arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; choose from {', '.join(STEMS)}")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    def to_dict(self) -> dict:
        return asdict(self)


class ResNetTrunk(_tv.models.ResNet):
    """torchvision's ResNet with a configurable stem and width, and no classifier."""

    def __init__(self, block, layers: list[int], width: int = 64, stem: str = "imagenet") -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            stride = 1 if stem == "small" else 2
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stride, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.out_dim = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """f: normalise (the dataset's mean/std, kept as buffers, or each image's own; exported with the graph), then
    the trunk."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        block, layers = ARCHS[cfg.arch]
        self.trunk = ResNetTrunk(block, layers, cfg.width, cfg.stem)
        last = self.trunk.out_dim
        self.out_dim = {"avg": last, "grid2": 4 * last, "grid4": 16 * last, "grid2+s3": 4 * last + 16 * (last // 2),
                        "multi": last + last // 2 + last // 4}[cfg.pool]
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.input_norm == "image":  # per image, so batch 1 ≡ batch N (training.export's bound on it)
            x = x - x.mean(dim=(2, 3), keepdim=True)
            x = x / (x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + IMAGE_NORM_EPS)
        else:
            x = (x - self.mean) / self.std
        if self.cfg.pool == "avg":
            return self.trunk(x)
        t = self.trunk
        x2 = t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x))))))
        x3 = t.layer3(x2)
        x4 = t.layer4(x3)
        if self.cfg.pool in ("grid2", "grid4"):
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x4, 2 if self.cfg.pool == "grid2" else 4), 1)
        if self.cfg.pool == "grid2+s3":  # each part unit-norm: neither outweighs the other in a cosine
            return torch.cat([nn.functional.normalize(torch.flatten(nn.functional.adaptive_avg_pool2d(x, s), 1))
                              for x, s in ((x4, 2), (x3, 4))], dim=1)
        return torch.cat([x4.mean((2, 3)), x3.mean((2, 3)), x2.mean((2, 3))], dim=1)


def build_encoder(cfg: EncoderConfig | dict) -> Encoder:
    if isinstance(cfg, dict):
        cfg = EncoderConfig(**cfg)
    return Encoder(cfg)


class MLPHead(nn.Module):
    """g_θ and q_θ in the paper: Linear → BatchNorm → ReLU → Linear (4096 hidden, 256 out by default)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
