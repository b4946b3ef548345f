"""Student networks: a small CNN for tiny grayscale images, torchvision ResNet-18/50 for photos."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from clipdebias.errors import UserError

ARCHS = ("cnn", "resnet18", "resnet50")
# Inputs at most this many pixels wide get the CIFAR-style ResNet stem (3x3 conv, stride 1, no
# max-pool), since the ImageNet stem would shrink a 32x32 image to 8x8 before the first block.
SMALL_INPUT_MAX_SIZE = 64
CNN_WIDTHS = (32, 64, 128)


class SmallCNN(nn.Module):
    """conv3x3 -> conv3x3/2 -> conv3x3/2 (BatchNorm + ReLU each), global average pool, linear."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = CNN_WIDTHS):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for position, width in enumerate(widths):
            stride = 1 if position == 0 else 2
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_model(
    arch: str, num_classes: int, in_channels: int = 3, image_size: int = 224, init_weights: str | Path | None = None
) -> nn.Module:
    """A randomly initialised student, optionally loaded from ``init_weights`` (see :func:`load_init_weights`)."""
    if arch == "cnn":
        model: nn.Module = SmallCNN(num_classes, in_channels)
    elif arch in ("resnet18", "resnet50"):
        if in_channels != 3:
            raise UserError(f"--arch {arch} needs RGB images; use --arch cnn for grayscale datasets")
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if image_size <= SMALL_INPUT_MAX_SIZE:
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    else:
        raise UserError(f"unknown --arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    if init_weights is not None:
        load_init_weights(model, init_weights)
    return model


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file
        raise UserError(f"--init-weights {str(path)!r} cannot be read as a torch state dict: {err}") from err
    for key in ("state_dict", "model", "student"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"--init-weights {str(path)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (plain, or under ``state_dict``/``model``/``student``; ``module.`` prefixes
    are stripped) into ``model``. The classifier ``fc.*`` is kept from ``model`` when its shape
    differs (another number of classes); any other missing or mismatched tensor is an error.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--init-weights {str(path)!r} is not a file")
    state = _state_dict_from_file(path)
    own = model.state_dict()
    for key in [k for k in state if k.startswith("fc.")]:
        if key in own and state[key].shape != own[key].shape:
            del state[key]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        raise UserError(
            f"--init-weights {str(path)!r}: {len(mismatched)} tensors have other shapes than the "
            f"--arch model (first: {mismatched[0]} {tuple(state[mismatched[0]].shape)} vs "
            f"{tuple(own[mismatched[0]].shape)})"
        )
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    if missing:
        raise UserError(
            f"--init-weights {str(path)!r} lacks {len(missing)} tensors of the --arch model (first: {missing[0]})"
        )
    model.load_state_dict(state, strict=False)
