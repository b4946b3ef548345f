"""Student networks: a small CNN for tiny grayscale images, torchvision ResNet-18/50 for photos, and
the zero-shot students: a head on frozen CLIP embeddings and the CLIP image tower with that head,
both initialised from CLIP's text classifier so that they start at zero-shot accuracy."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from clipdebias.utils.checkpoints import PICKLED_OBJECTS, checkpoint_kind, refused_pickle
from clipdebias.utils.errors import UserError

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
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if image_size <= SMALL_INPUT_MAX_SIZE:
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    else:
        raise UserError(f"unknown --arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    if init_weights is not None:
        load_init_weights(model, init_weights)
    return model


STATE_DICT = "expected a state dict saved with torch.save(model.state_dict(), PATH)"
"""What ``--init-weights FILE`` takes, for the error about a file that is something else."""


def check_init_weights_file(path: str | Path) -> Path:
    """The checks of ``--init-weights`` that cost nothing: a file, written by ``torch.save``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--init-weights {str(path)!r} is not a file")
    kind = checkpoint_kind(path)
    if kind not in ("torch", "torch-legacy"):
        what = f"a {kind} file" if kind is not None else "a checkpoint"
        raise UserError(f"--init-weights {str(path)!r} is not {what}; {STATE_DICT}")
    return path


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles; the error below says what is wrong
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file
        if refused_pickle(err):
            raise UserError(f"--init-weights {str(path)!r} is not a plain state dict: {PICKLED_OBJECTS}") from err
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--init-weights {str(path)!r} is not a checkpoint ({reason}); {STATE_DICT}") from err
    for key in ("state_dict", "model", "student"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"--init-weights {str(path)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


# Wrapper names of self-supervised checkpoints, in order of preference when several match equally
# (MoCo keeps a query and a key encoder of the same shape: the query encoder is the one to use).
WRAPPER_PREFIXES = ("encoder_q.", "backbone.", "encoder.", "model.")


def strip_wrapper_prefix(state: dict[str, torch.Tensor], own_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop the first dotted component of the keys when that makes more of them match ``own_keys``.

    Self-supervised checkpoints keep the network under a wrapper name (MoCo: ``encoder_q.conv1.weight``,
    others ``backbone.`` or ``encoder.``); the prefix that matches the most keys wins (ties go to
    :data:`WRAPPER_PREFIXES` in order, any other tie is a :class:`UserError`), and only keys that carry
    it are kept (the rest belong to other parts of the wrapper, e.g. MoCo's ``encoder_k``). A state
    dict whose keys already match is returned as is.
    """
    hits: dict[str, int] = {}
    for prefix in {key.split(".", 1)[0] + "." for key in state if "." in key}:
        hits[prefix] = sum(key.removeprefix(prefix) in own_keys for key in state if key.startswith(prefix))
    best_hits = max(hits.values(), default=0)
    if best_hits <= sum(key in own_keys for key in state):
        return state
    best = sorted(prefix for prefix, count in hits.items() if count == best_hits)
    known = [prefix for prefix in WRAPPER_PREFIXES if prefix in best]
    if not known and len(best) > 1:
        raise UserError(
            f"--init-weights holds several networks ({', '.join(p.rstrip('.') for p in best)}); "
            "save the one to start from alone"
        )
    chosen = known[0] if known else best[0]
    return {key.removeprefix(chosen): value for key, value in state.items() if key.startswith(chosen)}


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (plain, or under ``state_dict``/``model``/``student``; ``module.`` prefixes
    are stripped, and so is one wrapper prefix such as MoCo's ``encoder_q.``, see
    :func:`strip_wrapper_prefix`) into ``model``. The classifier ``fc.*`` is kept from ``model`` when its shape
    differs (another number of classes); any other missing or mismatched tensor is an error.
    """
    path = check_init_weights_file(path)
    own = model.state_dict()
    state = strip_wrapper_prefix(_state_dict_from_file(path), set(own))
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


# --- zero-shot students -------------------------------------------------------------------------

HEADS = ("linear", "mlp")


class TextHead(nn.Module):
    """Logits of L2-normalised image embeddings ``[B, D]``, initialised as CLIP's zero-shot classifier.

    ``fc`` starts as ``scale * classifier`` (``[C, D]``, rows the normalised text embeddings) with a zero
    bias, so ``head(x) == scale * x @ classifier.T``: the zero-shot logits. With ``hidden > 0`` a
    residual MLP adapter ``x + W2 relu(W1 x)`` comes first; ``W2`` starts at zero, so the MLP head
    also starts exactly at zero-shot.
    """

    def __init__(self, classifier: torch.Tensor, scale: float, hidden: int = 0):
        super().__init__()
        num_classes, dim = classifier.shape
        self.fc = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(float(scale) * classifier.float())
            self.fc.bias.zero_()
        self.adapter: nn.Module | None = None
        if hidden > 0:
            last = nn.Linear(hidden, dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.adapter = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapter is not None:
            x = x + self.adapter(x)
        return self.fc(x)


def build_head(kind: str, classifier: torch.Tensor, scale: float) -> TextHead:
    """``linear`` or ``mlp`` (a residual adapter as wide as the embedding) :class:`TextHead`."""
    if kind not in HEADS:
        raise UserError(f"unknown --head {kind!r}; choose one of: {', '.join(HEADS)}")
    return TextHead(classifier, scale, hidden=classifier.shape[1] if kind == "mlp" else 0)


class Autocast(nn.Module):
    """Runs ``module`` under ``torch.autocast`` with ``dtype`` (mixed precision; weights stay float32)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            return self.module(x)


class CLIPStudent(nn.Module):
    """CLIP's image tower followed by a :class:`TextHead` on its normalised features.

    The streams normalise images with ``input_mean``/``input_std`` (ImageNet's or CIFAR's); the
    student maps them to CLIP's own normalisation first (an exact per-channel affine map), so the
    tower sees what it was trained on. Wrap ``visual`` in :class:`Autocast` for mixed precision; the
    head and the logits stay float32.
    """

    def __init__(
        self,
        visual: nn.Module,
        head: TextHead,
        input_mean: tuple[float, ...],
        input_std: tuple[float, ...],
        clip_mean: tuple[float, ...],
        clip_std: tuple[float, ...],
    ):
        super().__init__()
        self.visual = visual
        self.head = head
        in_mean, in_std = torch.tensor(input_mean), torch.tensor(input_std)
        out_mean, out_std = torch.tensor(clip_mean), torch.tensor(clip_std)
        # x_clip = (x * in_std + in_mean - out_mean) / out_std = x * gain + shift, per channel.
        self.register_buffer("gain", (in_std / out_std).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((in_mean - out_mean) / out_std).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.visual(x * self.gain + self.shift)
        return self.head(nn.functional.normalize(features.float(), dim=-1))
