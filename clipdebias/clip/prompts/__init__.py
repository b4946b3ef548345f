"""Class names, prompt templates and the zero-shot text classifier.

The shipped prompt files live beside this module, one folder per dataset:
``<dataset>/classnames.txt`` (one class name per line, in label order) and
``<dataset>/templates.txt`` (one template per line, ``{}`` where the class name goes). A template is
filled as open_clip fills its own, with ``str.format``: ``{{`` and ``}}`` stand for literal braces,
and a template must hold exactly one plain ``{}`` field (no index, name or format spec). They are
package data, so they are installed with clipdebias. ``imagenet`` has OpenAI's 1000 class names
and 80 templates (generated from open_clip's ``zero_shot_metadata``), ``cifar10`` / ``cifar100``
the dataset class names and the 18 templates of the CLIP paper's CIFAR prompts.

The text classifier is, per class, the mean over templates of the normalised text embeddings,
normalised again: ``W[c] = normalize(mean_t normalize(text(template_t(class_c))))``.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipdebias.clip.backbone import Backbone
from clipdebias.utils.atomic import atomic_write
from clipdebias.utils.errors import UserError
from clipdebias.utils.progress import NoProgress, Progress

PROMPTS_DIR = Path(__file__).parent
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "templates.txt"
PLACEHOLDER = "{}"
# --templates keywords: OpenAI's 80 ImageNet templates, or one plain template.
OPENAI_TEMPLATES = "openai"
SIMPLE_TEMPLATES = "simple"
SIMPLE_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class PromptSet:
    """Class names (in label order) and templates, with where each came from."""

    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    classnames_source: str
    templates_source: str

    def prompts(self, label: int) -> list[str]:
        return [template.format(self.classnames[label]) for template in self.templates]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.classnames, self.templates]).encode()).hexdigest()


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of the non-empty lines of a UTF-8 text file, stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from err
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stripped."""
    return [line for _, line in numbered_lines(path)]


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be filled with a class name the way open_clip fills templates
    (``template.format(name)``: exactly one plain ``{}`` field), or ``None`` when it can."""
    try:
        fields = [
            (name, conversion, spec)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as err:
        return f"is not a valid template ({err}); write {{{{ and }}}} for a literal brace"
    if not fields:
        return f"has no '{PLACEHOLDER}' where the class name goes"
    if len(fields) > 1:
        return (
            f"has {len(fields)} fields; give exactly one '{PLACEHOLDER}', where the class name goes "
            "(write {{ and }} for literal braces)"
        )
    name, conversion, spec = fields[0]
    if name or conversion or spec:
        field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        return (
            f"has the field '{field}'; give a plain '{PLACEHOLDER}' where the class name goes (no index, name, format)"
        )
    return None


def shipped_file(dataset: str, name: str) -> Path | None:
    path = PROMPTS_DIR / dataset / name
    return path if path.is_file() else None


def load_classnames(dataset: str, dataset_classes: list[str], path: str | Path | None = None) -> tuple[list[str], str]:
    """Class names for ``dataset`` and where they came from.

    ``path`` (``--classnames``) wins; then the shipped file for the dataset; else the dataset's
    own class names (folder names) with underscores turned into spaces. A count that differs from
    the dataset's class count is an error, never a silent shift of labels.
    """
    if path is not None:
        names, source = read_lines(Path(path)), str(path)
    elif (shipped := shipped_file(dataset, CLASSNAMES_FILE)) is not None:
        names, source = read_lines(shipped), f"shipped {dataset}/{CLASSNAMES_FILE}"
    else:
        names, source = [c.replace("_", " ") for c in dataset_classes], "dataset class folders"
    if len(names) != len(dataset_classes):
        raise UserError(
            f"{source} has {len(names)} class names but dataset {dataset!r} has {len(dataset_classes)} classes "
            f"(first: {', '.join(dataset_classes[:3])}); give one name per class, in label order, "
            "with --classnames FILE"
        )
    return names, source


def load_templates(dataset: str, spec: str | None = None) -> tuple[list[str], str]:
    """Templates from ``--templates`` (``FILE``, ``openai`` or ``simple``) or the dataset default.

    The default is the shipped templates of the dataset, else OpenAI's 80 ImageNet templates.
    Every template must hold exactly one plain ``{}`` (see :func:`template_problem`); the error names
    the file and the line.
    """
    if spec is None:
        shipped = shipped_file(dataset, TEMPLATES_FILE)
        if shipped is not None:
            lines, source = numbered_lines(shipped), f"shipped {dataset}/{TEMPLATES_FILE}"
        else:
            return load_templates(dataset, OPENAI_TEMPLATES)
    elif spec == OPENAI_TEMPLATES:
        openai_file = shipped_file("imagenet", TEMPLATES_FILE)
        assert openai_file is not None, "the package lost its imagenet/templates.txt"
        lines, source = numbered_lines(openai_file), "openai"
    elif spec == SIMPLE_TEMPLATES:
        lines, source = [(1, SIMPLE_TEMPLATE)], f"simple ({SIMPLE_TEMPLATE!r})"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"--templates {spec}: no such file (or use 'openai' or 'simple')")
        lines, source = numbered_lines(path), str(path)
    if not lines:
        raise UserError(f"{source}: no templates")
    for number, template in lines:
        problem = template_problem(template)
        if problem is not None:
            raise UserError(f"{source}, line {number}: template {template!r} {problem}")
    return [template for _, template in lines], source


def load_prompts(
    dataset: str, dataset_classes: list[str], classnames: str | Path | None = None, templates: str | None = None
) -> PromptSet:
    names, names_source = load_classnames(dataset, dataset_classes, classnames)
    lines, lines_source = load_templates(dataset, templates)
    return PromptSet(tuple(names), tuple(lines), names_source, lines_source)


def encode_classifier(
    encode_texts: Callable[[list[str]], torch.Tensor],
    prompts: PromptSet,
    batch_size: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``[C, D]`` float32: per class, the normalised mean of the normalised prompt embeddings.

    ``encode_texts`` maps a list of prompts to normalised ``[B, D]`` embeddings; prompts are sent
    in batches of ``batch_size`` across class boundaries.
    """
    progress = progress or NoProgress()
    flat = [prompt for label in range(len(prompts.classnames)) for prompt in prompts.prompts(label)]
    progress.start("encoding prompts", len(flat))
    parts = []
    for start in range(0, len(flat), batch_size):
        batch = flat[start : start + batch_size]
        parts.append(F.normalize(encode_texts(batch).float().cpu(), dim=-1))
        progress.advance(len(batch))
    per_prompt = torch.cat(parts).reshape(len(prompts.classnames), len(prompts.templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def text_classifier(
    backbone: Backbone,
    prompts: PromptSet,
    cache_dir: Path | None,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The text classifier of ``backbone`` for ``prompts``, cached in ``cache_dir/text/`` when given."""
    key = hashlib.sha256(json.dumps([backbone.cache_identity, prompts.digest()], sort_keys=True).encode()).hexdigest()[
        :24
    ]
    path = Path(cache_dir) / "text" / f"{key}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = np.load(path)
        except (OSError, ValueError, EOFError):  # a damaged cache file is computed again
            cached = None
        if cached is not None and cached.shape[0] == len(prompts.classnames):
            return torch.from_numpy(cached)
    weights = encode_classifier(backbone.encode_texts, prompts, batch_size, progress)
    if path is not None:
        atomic_write(path, lambda handle: np.save(handle, weights.numpy()))
    return weights
