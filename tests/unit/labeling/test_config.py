from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from labeling.config import Taxonomy, build_label_config, label_from_result


def test_paths_accept_lists_and_joined_strings_and_deduplicate() -> None:
    tax = Taxonomy.from_paths(["B > y", ["A", "x"], "A > x"])
    assert tax.paths == (("A", "x"), ("B", "y"))
    assert tax.labels == ("A > x", "B > y")
    assert tax.hierarchical
    assert "A > x" in tax
    assert "A" not in tax


@pytest.mark.parametrize("bad", [[], ["A > "], ["A", "A > b"]])
def test_invalid_taxonomies_are_refused(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="categor"):
        Taxonomy.from_paths(bad)


def test_hierarchical_config_uses_taxonomy_and_escapes_names() -> None:
    tax = Taxonomy.from_paths(['Home & Kitchen > Pots "big"', "Toys <3+> > Games"])
    xml = build_label_config(tax)
    root = ET.fromstring(xml)  # well-formed despite &, <, > and quotes
    control = root.find("Taxonomy")
    assert control is not None
    (suggestions,) = root.findall("Choices")  # only the one-click suggestions, from task data
    assert (suggestions.get("name"), suggestions.get("value")) == ("suggestion", "$suggestions")
    tops = [c.get("value") for c in control.findall("Choice")]
    assert tops == ["Home & Kitchen", "Toys <3+>"]
    assert [c.get("value") for c in control.findall("Choice/Choice")] == ['Pots "big"', "Games"]
    shown = {t.get("value") for t in root.iter("Text")}
    assert {
        "$title",
        "$description",
        "Brand: $brand",
        "Price: $price",
        "Why it is here: $reason",
        "Similar items people labelled: $similar",
    } <= shown


def test_flat_config_uses_choices() -> None:
    root = ET.fromstring(build_label_config(Taxonomy.from_paths(["Shoes", "Hats & Caps"])))
    controls = {c.get("name"): c for c in root.findall("Choices")}
    assert set(controls) == {"suggestion", "category"}
    control = controls["category"]
    assert root.find("Taxonomy") is None
    assert [c.get("value") for c in control.findall("Choice")] == ["Hats & Caps", "Shoes"]


@pytest.mark.parametrize("paths", [["A > x", "B > y"], ["Shoes", "Hats"]])
def test_result_round_trips_through_label_from_result(paths: list[str]) -> None:
    tax = Taxonomy.from_paths(paths)
    for label in tax.labels:
        assert label_from_result(tax.result_for(label)) == label
        assert label_from_result(tax.result_for(label, suggested=True)) == label
    with pytest.raises(ValueError, match="not one of the taxonomy's 2 categories"):
        tax.result_for("Nope")


def test_label_from_result_ignores_other_controls_and_empty_results() -> None:
    assert label_from_result([]) is None
    assert label_from_result([{"from_name": "other", "value": {"choices": ["X"]}}]) is None


def test_a_category_chosen_in_the_taxonomy_wins_over_the_preselected_suggestion() -> None:
    tax = Taxonomy.from_paths(["A > x", "B > y"])
    both = tax.result_for("A > x", suggested=True) + tax.result_for("B > y")
    assert label_from_result(both) == "B > y"
    assert label_from_result(list(reversed(both))) == "B > y"


def test_a_category_name_holding_the_separator_is_refused() -> None:
    # As a list path it was accepted and shown, but "Cables > 2m" reads back as two levels: every
    # review of it was rejected and every escalation to it dead.
    with pytest.raises(ValueError, match="holds the level separator"):
        Taxonomy.from_paths([["Cables > 2m"], ["Cables > 5m"]])
    assert "Cables >2m" in Taxonomy.from_paths([["Cables >2m"]])  # no separator: one name
