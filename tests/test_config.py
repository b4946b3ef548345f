"""Label budgets and the seeded per-class split."""

import numpy as np
import pytest

from clipdebias.config.budgets import LabelBudget, parse_label_budget
from clipdebias.data.splits import split_labeled
from clipdebias.utils.errors import OptionError, UserError


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("0.2pct", "fraction", 0.002),
        ("1pct", "fraction", 0.01),
        ("10pct", "fraction", 0.1),
        ("100pct", "fraction", 1.0),
        ("4-per-class", "per_class", 4),
        ("1-per-class", "per_class", 1),
        (" 2-Per-Class ", "per_class", 2),
    ],
)
def test_parse_label_budget_accepts(text, kind, value):
    budget = parse_label_budget(text)
    assert budget.kind == kind
    assert budget.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "0pct", "150pct", "0-per-class", "-1pct", "", "1%", "1.5-per-class", "pct"])
def test_parse_label_budget_rejects_with_one_line(text):
    with pytest.raises(OptionError) as info:
        parse_label_budget(text)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.option == "labels" and "4-per-class" in message


def test_fraction_budget_counts_at_least_one_per_class():
    budget = parse_label_budget("0.2pct")
    assert budget.count_for(1300) == 3  # 2.6 rounds to 3
    assert budget.count_for(1000) == 2
    assert budget.count_for(50) == 1  # 0.1 -> at least one
    assert parse_label_budget("10pct").count_for(25) == 3  # 2.5 rounds half up
    assert parse_label_budget("7-per-class").count_for(5000) == 7


def test_split_is_per_class_deterministic_and_disjoint():
    labels = np.repeat(np.arange(5), 40)
    budget = parse_label_budget("3-per-class")
    labeled, unlabeled = split_labeled(labels, budget, seed=7)
    again, _ = split_labeled(labels, budget, seed=7)
    other, _ = split_labeled(labels, budget, seed=8)
    assert np.array_equal(labeled, again)
    assert not np.array_equal(labeled, other)
    assert np.bincount(labels[labeled], minlength=5).tolist() == [3] * 5
    assert len(np.intersect1d(labeled, unlabeled)) == 0
    assert len(labeled) + len(unlabeled) == len(labels)
    assert np.all(np.diff(labeled) > 0) and np.all(np.diff(unlabeled) > 0)


def test_split_fraction_on_imbalanced_classes():
    labels = np.concatenate([np.zeros(1000, int), np.ones(30, int)])
    labeled, _ = split_labeled(labels, LabelBudget("fraction", 0.01, "1pct"), seed=0)
    assert np.bincount(labels[labeled]).tolist() == [10, 1]


def test_split_never_labels_unknown_rows():
    labels = np.array([0, 0, -1, 1, 1, -1])
    labeled, unlabeled = split_labeled(labels, parse_label_budget("1-per-class"), seed=0)
    assert set(labels[labeled]) == {0, 1}
    assert {2, 5} <= set(unlabeled.tolist())


def test_split_with_too_few_images_is_a_user_error():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(UserError, match="'b' has only 1 image, "):
        split_labeled(labels, parse_label_budget("2-per-class"), seed=0, class_names=["a", "b"])


def test_counts_are_written_with_their_noun_in_the_right_number():
    from clipdebias.utils.formatting import count_of

    assert [count_of(n, "image") for n in (0, 1, 2, 1500)] == ["0 images", "1 image", "2 images", "1,500 images"]
