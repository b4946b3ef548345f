"""The CLIP backbone: an open_clip model, its evaluation preprocessing and tokenizer.

``--model`` is an open_clip model name (``ViT-B-32``, ``RN50``, ...) or the path of a JSON model
config (registered with open_clip at run time under its file stem). ``--pretrained`` is resolved
by :mod:`clipdebias.clip.weights` (a tag, a file, ``hf-hub:``, ``local-dir:`` or ``none``).

QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, but open_clip's plain model configs
(``ViT-B-32``) use GELU; loading OpenAI weights into them silently costs accuracy. Here the
activation follows the weights whichever way they are loaded (tag, TorchScript file, Hub folder);
``--quick-gelu/--no-quick-gelu`` overrides it.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import get_input_dtype
from open_clip.transform import PreprocessCfg, image_transform_v2

from clipdebias.clip.weights import LOCAL_DIR_PREFIX, Weights, file_sha256, resolve_weights
from clipdebias.config.defaults import DEVICE, ENCODE_PRECISION, MODEL, PRECISIONS, PRETRAINED
from clipdebias.utils.checkpoints import PICKLED_OBJECTS, checkpoint_kind, raised_while_reading, refused_pickle
from clipdebias.utils.device import resolve_device
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.progress import Progress

# Random weights (--pretrained none) are drawn with this seed, so that they are the same every run.
RANDOM_WEIGHTS_SEED = 0
_REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


@dataclass(frozen=True)
class BackboneConfig:
    """The options that choose and place the CLIP model."""

    model: str = MODEL
    pretrained: str = PRETRAINED
    precision: str = ENCODE_PRECISION
    device: str = DEVICE
    quick_gelu: bool | None = None  # None: follow the weights


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def register_model(model: str) -> tuple[str, dict]:
    """The open_clip name and config of ``--model``; a JSON file is registered under its stem."""
    path = Path(model).expanduser()
    if model.endswith(".json") or path.is_file():
        if not path.is_file():
            raise UserError(f"--model {model}: no such model config file")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"--model {model}: cannot read the JSON model config ({err})") from err
        missing = [key for key in _REQUIRED_CONFIG_KEYS if not isinstance(config, dict) or key not in config]
        if missing:
            raise UserError(f"--model {model}: not an open_clip model config (missing {', '.join(missing)})")
        if open_clip.get_model_config(path.stem) != config:
            open_clip.add_model_config(path)
        return path.stem, config
    config = open_clip.get_model_config(model)
    if config is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"--model {model} is not an open_clip model name nor a JSON config file; {hint}see open_clip.list_models()"
        )
    return model, config


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip and torch warn through logging and ``warnings`` while loading (random weights,
    TorchScript archives); this tool reports those facts itself, once."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class Backbone:
    """A loaded CLIP model with what the rest of clipdebias needs from it.

    ``encode_images`` / ``encode_texts`` return L2-normalised float32 embeddings ``[B, embed_dim]``.
    ``cache_identity`` names the model, weights (content hash) and precision for cache keys;
    ``transform`` is the evaluation preprocessing and ``transform_id`` its key.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        transform: Callable,
        tokenizer: Callable,
        config: BackboneConfig,
        weights: Weights,
        name: str,
        device: torch.device,
        quick_gelu: bool,
        cache_identity: dict[str, str],
        preprocess_cfg: dict,
    ):
        self.model = model
        self.transform = transform
        self.tokenizer = tokenizer
        self.config = config
        self.weights = weights
        self.name = name
        self.device = device
        self.quick_gelu = quick_gelu
        self.cache_identity = cache_identity
        self.preprocess_cfg = preprocess_cfg
        self.input_dtype = get_input_dtype(config.precision) or torch.float32  # what the model takes in
        self.transform_id = "clip-eval-" + _digest(preprocess_cfg)[:16]

    @property
    def random_weights(self) -> bool:
        return self.weights.random

    def warn_if_random(self, progress: Progress, meaningless: str) -> None:
        """Tell the user, as a warning on ``progress``, that ``meaningless`` (what the command
        makes) means nothing when the model has random weights (``--pretrained none``)."""
        if self.random_weights:
            progress.note(
                f"--pretrained none: the model has RANDOM weights; {meaningless} meaningless (for tests only)",
                warning=True,
            )

    @property
    def embed_dim(self) -> int:
        return (
            int(self.model.text_projection.shape[-1])
            if hasattr(self.model, "text_projection") and self.model.text_projection is not None
            else int(self.model.visual.output_dim)
        )

    @property
    def logit_scale(self) -> float:
        """The model's learned logit scale ``exp(logit_scale)`` (100 for OpenAI CLIP)."""
        return float(self.model.logit_scale.detach().float().exp().item())

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = self.model.encode_image(pixels.to(self.device, self.input_dtype, non_blocking=True))
            return F.normalize(features.float(), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def describe(self) -> list[tuple[str, str]]:
        """``(name, value)`` rows for a summary table."""
        weights = (
            "random (--pretrained none)" if self.weights.random else f"{self.weights.spec} ({self.weights.checkpoint})"
        )
        return [
            ("model", self.name),
            ("weights", weights),
            ("activation", "QuickGELU" if self.quick_gelu else "GELU"),
            ("precision", self.config.precision),
            ("device", str(self.device)),
            ("embedding size", str(self.embed_dim)),
        ]


def _weights_identity(weights: Weights, memo_dir: Path | None) -> str:
    if weights.random:
        return f"random-seed-{RANDOM_WEIGHTS_SEED}"
    assert weights.checkpoint is not None
    return "sha256:" + file_sha256(weights.checkpoint, memo_dir)


CLIP_CHECKPOINTS = (
    "expected CLIP weights: a state dict saved with torch.save, a .safetensors file, or OpenAI's TorchScript archive"
)
"""What ``--pretrained FILE`` takes, for the error about a file that is none of these."""


def _named(weights: Weights, spec: str) -> str:
    """``--pretrained FILE``, or ``--pretrained SPEC: FILE`` where a tag or folder led to the file."""
    return f"--pretrained {spec}" if weights.source == "file" else f"--pretrained {spec}: {weights.checkpoint}"


def _check_checkpoint(weights: Weights, spec: str) -> None:
    """Refuse, before the model is built, a weights file that is no checkpoint at all (text, an image)."""
    if weights.checkpoint is None:
        return
    path, kind = weights.checkpoint, checkpoint_kind(weights.checkpoint)
    if kind is None:
        raise UserError(f"{_named(weights, spec)} is not a checkpoint; {CLIP_CHECKPOINTS}")
    if kind == "safetensors" and path.suffix != ".safetensors":
        raise UserError(f"{_named(weights, spec)} holds safetensors data; name it *.safetensors to load it")


def _not_a_checkpoint(err: Exception, weights: Weights, spec: str) -> UserError | None:
    """The error to show when building the model failed because its weights file could not be read."""
    if refused_pickle(err):
        return UserError(f"{_named(weights, spec)} is not a plain checkpoint: {PICKLED_OBJECTS}")
    if weights.checkpoint is not None and raised_while_reading(err):
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return UserError(f"{_named(weights, spec)} is not a checkpoint ({reason}); {CLIP_CHECKPOINTS}")
    return None


def load_backbone(config: BackboneConfig, digest_dir: Path | None = None) -> Backbone:
    """Build the model of ``config`` with its weights on its device, in eval mode.

    ``digest_dir`` keeps content hashes of weight files between runs (see :func:`file_sha256`).
    """
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {config.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    device = resolve_device(config.device)
    if config.model.startswith(("hf-hub:", LOCAL_DIR_PREFIX)):
        raise UserError(
            f"--model {config.model}: give Hub and local folders as --pretrained {config.model} (with any --model)"
        )
    name, model_cfg = register_model(config.model)
    weights = resolve_weights(name, config.pretrained)
    _check_checkpoint(weights, config.pretrained)
    if weights.config_dir is not None:  # the folder's own config defines the architecture
        source = f"{LOCAL_DIR_PREFIX}{weights.config_dir}"
        model_cfg = json.loads((weights.config_dir / "open_clip_config.json").read_text(encoding="utf-8"))
        model_cfg = model_cfg.get("model_cfg", model_cfg)
        name = weights.spec
    else:
        source = name
    quick_gelu = bool(
        config.quick_gelu
        if config.quick_gelu is not None
        else weights.quick_gelu
        if weights.quick_gelu is not None
        else model_cfg.get("quick_gelu", False)
    )
    checkpoint = None if weights.random or weights.config_dir is not None else str(weights.checkpoint)
    try:
        with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = open_clip.create_model(
                source,
                pretrained=checkpoint,
                precision=config.precision,
                device=device,
                force_preprocess_cfg=weights.preprocess or None,
                pretrained_image=False,
                pretrained_text=False,
                weights_only=not weights.torchscript,
                require_pretrained=not weights.random,
                quick_gelu=quick_gelu,
            )
            tokenizer = open_clip.get_tokenizer(source)
    except (UserError, OptionError):
        raise
    except Exception as err:  # noqa: BLE001 - a weights/config mismatch is the user's to fix, in one line
        unreadable = _not_a_checkpoint(err, weights, config.pretrained)
        if unreadable is not None:
            raise unreadable from err
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot build --model {config.model} with --pretrained {config.pretrained}: {message}"
        ) from err
    model.eval()
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    identity = {
        "model": name,
        "model_config": _digest({**model_cfg, "quick_gelu": quick_gelu})[:16],
        "weights": _weights_identity(weights, digest_dir),
        "precision": config.precision,
    }
    return Backbone(model, transform, tokenizer, config, weights, name, device, quick_gelu, identity, preprocess_cfg)
