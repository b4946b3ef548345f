"""Finding CLIP weights: open_clip tags, local files, ``hf-hub:org/repo``, ``local-dir:PATH``, ``none``.

Weights are looked up on this machine first (the Hugging Face cache for tags and ``hf-hub:``, and
``~/.cache/clip`` where open_clip keeps files it fetched from a URL). Only when they are missing
and ``HF_HUB_OFFLINE`` is not set is the network tried, and only after one probe that gives up
after :data:`NETWORK_TIMEOUT_S` seconds, so that missing weights end in seconds with one line that
says what was looked for and how to supply it, instead of a retry loop or silently random weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

from clipdebias.utils.atomic import atomic_write_json
from clipdebias.utils.errors import OptionError, UserError

PRETRAINED_NONE = "none"
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
OPEN_CLIP_CONFIG = "open_clip_config.json"
# Where open_clip stores weights it downloads from a URL (open_clip.pretrained.download_pretrained_from_url).
OPEN_CLIP_URL_CACHE = "~/.cache/clip"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# Seconds to wait for a weights host to answer before declaring it unreachable (one try, no
# retries); $CLIPDEBIAS_NETWORK_TIMEOUT overrides it.
NETWORK_TIMEOUT_S = 5.0
NETWORK_TIMEOUT_ENV = "CLIPDEBIAS_NETWORK_TIMEOUT"
# Files that mark OpenAI's original TorchScript checkpoints (e.g. ~/.cache/clip/ViT-B-32.pt).
_TORCHSCRIPT_MARKER = "constants.pkl"
_HASH_BLOCK = 8 << 20
_TAGS_SHOWN = 6


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from, resolved to files on this machine.

    ``source`` is ``none``, ``tag``, ``file``, ``hf-hub`` or ``local-dir``. ``checkpoint`` is the
    weights file (``None`` for random weights). ``config_dir`` is a folder holding
    ``open_clip_config.json`` next to the weights (``hf-hub:`` and ``local-dir:``), whose model
    config then defines the architecture. ``quick_gelu`` is what the weights were trained with
    when known (OpenAI weights always use QuickGELU), else ``None``. ``preprocess`` holds
    preprocessing values a tag prescribes (mean, std, interpolation, resize mode).
    """

    source: str
    spec: str
    checkpoint: Path | None = None
    config_dir: Path | None = None
    quick_gelu: bool | None = None
    torchscript: bool = False
    preprocess: dict = field(default_factory=dict)

    @property
    def random(self) -> bool:
        return self.source == PRETRAINED_NONE


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "on", "yes", "true"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir() -> Path:
    return Path(constants.HF_HUB_CACHE)


def hub_endpoint() -> str:
    return constants.ENDPOINT


def network_timeout() -> float:
    """:data:`NETWORK_TIMEOUT_S`, or ``$CLIPDEBIAS_NETWORK_TIMEOUT`` seconds when set."""
    text = os.environ.get(NETWORK_TIMEOUT_ENV, "").strip()
    if not text:
        return NETWORK_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"${NETWORK_TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


def probe_url(url: str, timeout: float | None = None) -> str | None:
    """``None`` if ``url``'s host answers (any HTTP status) within ``timeout`` seconds, else why not.

    Runs in a daemon thread so that a hanging DNS lookup cannot hold the caller past the timeout.
    """
    timeout = network_timeout() if timeout is None else timeout
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered; it is reachable
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            outcome.append(f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


def is_torchscript_archive(path: Path) -> bool:
    """True for OpenAI's original TorchScript checkpoints (a zip archive holding ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == _TORCHSCRIPT_MARKER for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _mentions_openai(path: Path) -> bool:
    """Heuristic for a plain state dict: the file or its two parent folders are named after OpenAI
    (as in the Hugging Face cache folder ``models--timm--vit_base_patch32_clip_224.openai``)."""
    return any("openai" in part.lower() for part in path.resolve().parts[-3:])


def _how_to_supply(model: str, tag: str | None) -> str:
    fetch = (
        f"run `python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{tag}')\"` "
        "on a machine with internet and copy its Hugging Face cache here (point HF_HOME at it)"
        if tag
        else "download them on a machine with internet and copy the Hugging Face cache here (point HF_HOME at it)"
    )
    return f"{fetch}, or pass --pretrained /path/to/weights (.bin, .safetensors, .pt) or --pretrained local-dir:DIR"


def _cached_hub_file(repo_id: str, filenames: list[str]) -> Path | None:
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=hub_cache_dir())
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _safetensors_first(filename: str) -> list[str]:
    """open_clip's download order: a ``.safetensors`` twin of a ``.bin``/``.pth`` name first."""
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _network_or_fail(url: str, looked_for: str, how: str) -> None:
    """Raise :class:`UserError` unless downloading is allowed and ``url``'s host answers quickly."""
    if hub_offline():
        raise UserError(f"{looked_for}; HF_HUB_OFFLINE is set, so nothing is downloaded: {how}")
    parts = urllib.parse.urlsplit(url)
    problem = probe_url(f"{parts.scheme}://{parts.netloc}/")
    if problem is not None:
        raise UserError(f"{looked_for}; {parts.netloc} cannot be reached ({problem}): {how}")


def _resolve_tag(model: str, tag: str, cfg: dict) -> Weights:
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    quick_gelu = True if cfg.get("quick_gelu") else None
    places: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        # open_clip writes 'org/repo/' (default file name) or 'org/repo/file.bin'.
        repo_id, filename = os.path.split(hub)
        names = _safetensors_first(filename or HF_WEIGHTS_NAME)
        places.append(f"{repo_id}/{' or '.join(names)} in the Hugging Face cache {hub_cache_dir()}")
        found = _cached_hub_file(repo_id, names)
        if found is not None:
            return Weights("tag", tag, found, quick_gelu=quick_gelu, preprocess=preprocess)
    url = cfg.get("url", "")
    if url:
        local = Path(OPEN_CLIP_URL_CACHE).expanduser() / os.path.basename(url)
        places.append(str(local))
        if local.is_file():
            return _file_weights(local, tag, "tag", quick_gelu, preprocess)
    looked_for = (
        f"weights for --model {model} --pretrained {tag} are not on this machine (looked for {' and '.join(places)})"
    )
    how = _how_to_supply(model, tag)
    _network_or_fail(hub_endpoint() if hub else url, looked_for, how)
    try:
        path = open_clip.pretrained.download_pretrained(cfg)
    except Exception as err:  # noqa: BLE001 - any download failure becomes one line
        raise UserError(
            f"{looked_for}; downloading them failed ({type(err).__name__}: {_first_line(err)}): {how}"
        ) from err
    if not path:
        raise UserError(f"{looked_for}; open_clip has no download location for this tag: {how}")
    return _file_weights(Path(path), tag, "tag", quick_gelu, preprocess)


def _file_weights(
    path: Path, spec: str, source: str, quick_gelu: bool | None = None, preprocess: dict | None = None
) -> Weights:
    torchscript = is_torchscript_archive(path)
    if quick_gelu is None and (torchscript or _mentions_openai(path)):
        quick_gelu = True
    return Weights(source, spec, path, quick_gelu=quick_gelu, torchscript=torchscript, preprocess=preprocess or {})


def _config_quick_gelu(config_path: Path, name: str) -> bool | None:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {config_path}: {err}") from err
    model_cfg = config.get("model_cfg", config)
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg:
        raise UserError(f"{config_path} has no open_clip model config (expected a 'model_cfg' with 'vision_cfg')")
    if "quick_gelu" in model_cfg:
        return bool(model_cfg["quick_gelu"])
    return True if "openai" in name.lower() else None


def _resolve_local_dir(spec: str) -> Weights:
    folder = Path(spec[len(LOCAL_DIR_PREFIX) :]).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"--pretrained {spec}: {folder} is not a directory "
            f"(expected a folder with {OPEN_CLIP_CONFIG} and a weights file)"
        )
    config = folder / OPEN_CLIP_CONFIG
    if not config.is_file():
        raise UserError(
            f"--pretrained {spec}: {config} is missing "
            "(write the model config there, as open_clip's Hub folders have it)"
        )
    checkpoints = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not checkpoints:
        raise UserError(f"--pretrained {spec}: no weights file ({', '.join(CHECKPOINT_SUFFIXES)}) in {folder}")
    return Weights(
        "local-dir", spec, checkpoints[0], config_dir=folder, quick_gelu=_config_quick_gelu(config, str(folder))
    )


def _resolve_hub(spec: str) -> Weights:
    repo_id = spec[len(HF_HUB_PREFIX) :].strip("/")
    if repo_id.count("/") != 1:
        raise OptionError("pretrained", f"{spec}: expected hf-hub:ORG/REPO")
    names = _safetensors_first(HF_WEIGHTS_NAME)
    config = _cached_hub_file(repo_id, [OPEN_CLIP_CONFIG])
    weights = _cached_hub_file(repo_id, names)
    if config is None or weights is None or config.parent != weights.parent:
        looked_for = (
            f"--pretrained {spec} is not on this machine (looked for {repo_id}/{OPEN_CLIP_CONFIG} and "
            f"{' or '.join(names)} in the Hugging Face cache {hub_cache_dir()})"
        )
        how = _how_to_supply(spec, None)
        _network_or_fail(hub_endpoint(), looked_for, how)
        try:
            config = Path(hf_hub_download(repo_id, OPEN_CLIP_CONFIG))
            weights = Path(open_clip.pretrained.download_pretrained_from_hf(repo_id))
        except Exception as err:  # noqa: BLE001 - any download failure becomes one line
            raise UserError(
                f"{looked_for}; downloading failed ({type(err).__name__}: {_first_line(err)}): {how}"
            ) from err
    return Weights("hf-hub", spec, weights, config_dir=config.parent, quick_gelu=_config_quick_gelu(config, repo_id))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def resolve_weights(model: str, pretrained: str) -> Weights:
    """Resolve ``--pretrained`` for the open_clip model ``model`` to files on this machine.

    Raises :class:`UserError` (one line: what was looked for, how to supply it) when the weights
    are not here and cannot be fetched quickly.
    """
    spec = pretrained.strip()
    if spec.lower() == PRETRAINED_NONE:
        return Weights(PRETRAINED_NONE, PRETRAINED_NONE)
    if spec.startswith(HF_HUB_PREFIX):
        return _resolve_hub(spec)
    if spec.startswith(LOCAL_DIR_PREFIX):
        return _resolve_local_dir(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return _file_weights(path, spec, "file")
    if path.is_dir():
        raise UserError(
            f"--pretrained {spec} is a directory; "
            f"use --pretrained local-dir:{spec} for a folder with {OPEN_CLIP_CONFIG} and weights"
        )
    cfg = get_pretrained_cfg(model, spec)
    if cfg:
        return _resolve_tag(model, spec, cfg)
    tags = list_pretrained_tags_by_model(model)
    shown = ", ".join(tags[:_TAGS_SHOWN]) + (f", ... ({len(tags)} in all)" if len(tags) > _TAGS_SHOWN else "")
    known = f"tags of {model}: {shown}" if tags else f"open_clip knows no tags for {model}"
    if os.sep in spec or spec.endswith(CHECKPOINT_SUFFIXES):
        raise UserError(f"--pretrained {spec}: no such file ({known}; or hf-hub:ORG/REPO, local-dir:DIR, none)")
    raise UserError(
        f"--pretrained {spec!r} is not a weights tag of {model} nor a file "
        f"({known}; or a file path, hf-hub:ORG/REPO, local-dir:DIR, none)"
    )


def file_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """SHA-256 of a file's content, remembered in ``memo_dir/digests.json`` by path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    memo_file = Path(memo_dir) / "digests.json" if memo_dir is not None else None
    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if memo_key in memo:
            return memo[memo_key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    value = digest.hexdigest()
    if memo_file is not None:
        memo[memo_key] = value
        atomic_write_json(memo_file, memo)
    return value
