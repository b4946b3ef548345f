"""Shipped prompt files, class-name and template resolution, the text classifier."""

import pytest
import torch
import torch.nn.functional as F

from clipdebias.clip.prompts import (
    SIMPLE_TEMPLATE,
    PromptSet,
    encode_classifier,
    load_classnames,
    load_prompts,
    load_templates,
    read_lines,
    shipped_file,
)
from clipdebias.utils.errors import UserError


def test_shipped_imagenet_prompts_are_open_clips_lists():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    assert read_lines(shipped_file("imagenet", "classnames.txt")) == list(IMAGENET_CLASSNAMES)
    assert read_lines(shipped_file("imagenet", "templates.txt")) == [
        template("{}") for template in OPENAI_IMAGENET_TEMPLATES
    ]
    assert len(load_templates("imagenet")[0]) == 80


@pytest.mark.parametrize("dataset, count", [("cifar10", 10), ("cifar100", 100)])
def test_shipped_cifar_prompts(dataset, count):
    names = read_lines(shipped_file(dataset, "classnames.txt"))
    templates, _ = load_templates(dataset)
    assert len(names) == count and len(set(names)) == count and not any("_" in name for name in names)
    assert len(templates) == 18 and templates[0] == "a photo of a {}." and templates[-1] == "a photo of the big {}."
    if dataset == "cifar100":
        assert names[:4] == ["apple", "aquarium fish", "baby", "bear"] and "sweet pepper" in names


def test_imagefolder_names_come_from_folders_with_spaces():
    names, source = load_classnames("imagefolder", ["cat", "red_fox", "sea_lion"])
    assert names == ["cat", "red fox", "sea lion"] and "folders" in source
    assert load_templates("imagefolder")[0] == load_templates("imagenet", "openai")[0]


def test_class_name_count_mismatch_is_an_error(tmp_path):
    file = tmp_path / "names.txt"
    file.write_text("cat\ndog\n")
    with pytest.raises(UserError, match="has 2 class names but dataset 'imagefolder' has 3 classes"):
        load_classnames("imagefolder", ["a", "b", "c"], file)
    with pytest.raises(UserError, match="has 10 class names"):
        load_classnames("cifar10", [f"class{i}" for i in range(9)])


def test_templates_keywords_files_and_errors(tmp_path):
    assert load_templates("cifar10", "simple")[0] == [SIMPLE_TEMPLATE]
    good = tmp_path / "t.txt"
    good.write_text("a {} photo\n\n  itap of a {}  \n")
    assert load_templates("imagefolder", str(good))[0] == ["a {} photo", "itap of a {}"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a {} photo\na photo\n")
    with pytest.raises(UserError, match=r"bad.txt, line 2: template 'a photo' has no '\{\}'"):
        load_templates("imagefolder", str(bad))
    with pytest.raises(UserError, match="no such file"):
        load_templates("imagefolder", str(tmp_path / "missing.txt"))


def test_text_classifier_is_the_normalised_mean_of_normalised_prompt_embeddings():
    prompts = PromptSet(("cat", "red fox"), ("a {}.", "a photo of the {}.", "{}!"), "test", "test")
    table = torch.randn(100, 8)

    def encode(texts):  # a deterministic fake text encoder
        return F.normalize(torch.stack([table[sum(map(ord, t)) % 100] for t in texts]), dim=-1)

    classifier = encode_classifier(encode, prompts, batch_size=4)
    expected = torch.stack([F.normalize(encode(prompts.prompts(c)).mean(0), dim=0) for c in range(2)])
    assert classifier.shape == (2, 8) and torch.allclose(classifier, expected, atol=1e-6)
    assert prompts.prompts(1) == ["a red fox.", "a photo of the red fox.", "red fox!"]


def test_load_prompts_digest_tracks_content():
    first = load_prompts("imagefolder", ["cat", "dog"], templates="simple")
    second = load_prompts("imagefolder", ["cat", "wolf"], templates="simple")
    assert (
        first.digest() != second.digest()
        and first.digest() == load_prompts("imagefolder", ["cat", "dog"], templates="simple").digest()
    )


def test_repo_level_prompt_folders_point_at_the_shipped_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for dataset, count in (("imagenet", 1000), ("cifar10", 10), ("cifar100", 100)):
        names = (root / "prompts" / dataset / "classnames.txt").read_text().splitlines()
        assert len(names) == count
        assert all("{}" in t for t in (root / "prompts" / dataset / "templates.txt").read_text().splitlines())


@pytest.mark.parametrize("dataset, spec", [("imagenet", None), ("cifar10", None), ("cifar100", None),
                                           ("imagefolder", "openai"), ("imagefolder", "simple")])  # fmt: skip
def test_shipped_templates_are_filled_as_open_clip_fills_them_with_the_same_prompts_as_before(dataset, spec):
    """open_clip fills a template string with ``template.format(name)``; the shipped sets give the
    prompts that replacing ``{}`` gave before, also for a class name that holds braces."""
    templates, _ = load_templates(dataset, spec)
    names = ("red fox", "a {} name", "x{0}y")
    prompts = PromptSet(names, tuple(templates), "test", "test")
    for label, name in enumerate(names):
        assert prompts.prompts(label) == [template.replace("{}", name) for template in templates]


def test_templates_take_escaped_braces_and_refuse_any_other_field(tmp_path):
    file = tmp_path / "t.txt"
    file.write_text("a {{curly}} photo of a {}.\n")
    templates, _ = load_templates("imagefolder", str(file))
    assert PromptSet(("cat",), tuple(templates), "", "").prompts(0) == ["a {curly} photo of a cat."]
    for bad, problem in [
        ("a {} of a {}.", "has 2 fields; give exactly one '{}'"),
        ("a photo of a {0}.", "has the field '{0}'"),
        ("a photo of a {name}.", "has the field '{name}'"),
        ("a photo of a {:>9}.", "has the field '{:>9}'"),
        ("a photo of a {!r}.", "has the field '{!r}'"),
        ("a photo of a {}}.", "is not a valid template (Single '}' encountered"),
        ("a photo of a {.", "is not a valid template"),
    ]:
        file.write_text(f"a photo of a {{}}.\n\n{bad}\n")
        with pytest.raises(UserError) as caught:
            load_templates("imagefolder", str(file))
        assert str(caught.value).startswith(f"{file}, line 3: template {bad!r} {problem}"), caught.value
