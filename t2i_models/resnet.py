"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition", Table 1, 18-layer:
a 7x7/2 stem and max-pool, then 4 stages of 2 basic blocks at 64, 128, 256, 512 channels, average
pool, a 1000-way linear layer), as the frozen feature network of the perceptual loss
(``perceptual.py``).

torchvision cannot be imported beside this project's torch, so the network is written here with
torchvision's exact module and parameter names and shapes (``torchvision/models/resnet.py``:
``ResNet.__init__``, ``_make_layer``, ``BasicBlock``): ``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` (1x1/2 projection) and ``.1`` (its BatchNorm), ``fc``; BatchNorm
buffers ``running_mean``, ``running_var``, ``num_batches_tracked``; convolutions without bias.
That is 122 state-dict tensors and 11,689,512 parameters (torchvision's ``ResNet18_Weights
.IMAGENET1K_V1`` meta ``num_params``), so the published ImageNet file ``resnet18-f37072fd.pth``
(``https://download.pytorch.org/models/resnet18-f37072fd.pth``; by torch.hub's convention,
``torch/hub.py`` ``HASH_REGEX``, the part after the dash is the first 8 hex digits of the file's
sha256, which ``load_state_dict_from_url(check_hash=True)`` checks) loads with ``strict=True``.

Weights come from a local file only, read by ``pretrained.safe_load.read_state_dict``
(``torch.load(weights_only=True)``, or safetensors): nothing is downloaded and no pickled code
runs. ``check_state_dict`` names every missing, unexpected and mis-shaped tensor in one line.

``features(images)`` takes images in [0, 1] and applies torchvision's ImageNet normalisation
(mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225: the ``ImageClassification`` preset of the
IMAGENET1K weights) inside; ``forward`` takes already-normalised input, like torchvision's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from t2i_data.errors import T2IError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision ImageClassification preset (IMAGENET1K weights)
IMAGENET_STD = (0.229, 0.224, 0.225)
PUBLISHED_FILE = "resnet18-f37072fd.pth"  # torchvision ResNet18_Weights.IMAGENET1K_V1; f37072fd = sha256[:8]
NUM_PARAMS = 11_689_512  # torchvision ResNet18_Weights.IMAGENET1K_V1 meta "num_params"
# the outputs ``features`` can return, in network order ("fc": the 1000 logits, the seed's "last layer")
FEATURES = ("layer1", "layer2", "layer3", "layer4", "fc")


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)  # eps 1e-5, momentum 0.1: torchvision's (nn.BatchNorm2d defaults)


class BasicBlock(nn.Module):
    """conv3x3(stride) → BN → ReLU → conv3x3 → BN, plus the identity (or ``downsample``: 1x1
    conv(stride) → BN), then ReLU. (B, cin, H, W) → (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's ``resnet18()`` layout. ``forward``: normalised (B, 3, H, W) → logits (B, 1000)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths, cin = (64, 128, 256, 512), 64
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c)))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation (used only for random-init tests)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, ("fc",), normalize=False)["fc"]

    def features(self, images: torch.Tensor, layers: tuple[str, ...] | list[str] = ("layer2", "fc"),
                 normalize: bool = True) -> dict[str, torch.Tensor]:
        """{name: output} for each of ``layers`` (names from ``FEATURES``): "layerK" is that stage's
        output (B, C_K, H/2^(K+1), W/2^(K+1)), C = 64, 128, 256, 512; "fc" the logits (B, 1000).
        ``images`` (B, 3, H, W) in [0, 1] are ImageNet-normalised first (``normalize=False``: they
        already are). The network runs only as far as the deepest layer asked for."""
        unknown = [n for n in layers if n not in FEATURES]
        if unknown or not layers:
            raise ValueError(f"ResNet-18 features: {', '.join(map(repr, unknown)) or 'none asked'}; known: {', '.join(FEATURES)}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ResNet-18 input: expected shape ('*', 3, '*', '*'), got {tuple(images.shape)}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype) if normalize else images
        last = max(FEATURES.index(n) for n in layers)
        out: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        for i, name in enumerate(FEATURES[:last + 1]):
            if name == "fc":
                x = self.fc(torch.flatten(self.avgpool(x), 1))  # (B, 1000)
            else:
                x = getattr(self, name)(x)
            if name in layers:
                out[name] = x
        return out


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision resnet18's state-dict names → shapes (122 tensors), from this module's layout."""
    return {k: tuple(v.shape) for k, v in ResNet18().state_dict().items()}


def check_state_dict(sd: dict[str, torch.Tensor], where: str) -> None:
    """``T2IError`` in one line naming every missing, unexpected and mis-shaped tensor of ``sd``
    against torchvision's resnet18 layout (a ResNet-34/50 file, a classifier with another head, a
    renamed key)."""
    want = expected_shapes()
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    shaped = sorted(f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in set(want) & set(sd) if tuple(sd[k].shape) != want[k])
    if not (missing or unexpected or shaped):
        return
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if names:
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            parts.append(f"{len(names)} {what}: {shown}")
    raise T2IError(f"{where}: not a torchvision ResNet-18 state dict ({'; '.join(parts)}); give torchvision's "
                   f"{PUBLISHED_FILE} (ImageNet) or a state dict saved from torchvision.models.resnet18()")


def load_resnet18(path: str | Path, what: str = "perceptual_weights") -> tuple[ResNet18, str]:
    """(ResNet-18 in eval mode with every parameter frozen, the file's sha256) from a local state
    dict (``.pth`` / ``.pt`` via ``torch.load(weights_only=True)``, or ``.safetensors``). ``T2IError``
    for a missing or unreadable file, or one whose tensors do not fit (``check_state_dict``)."""
    from .pretrained.safe_load import file_sha256, read_state_dict

    where = f"{what}={path}"
    sd = read_state_dict(path, "ResNet-18")
    check_state_dict(sd, where)
    model = ResNet18()
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False), file_sha256(path)
