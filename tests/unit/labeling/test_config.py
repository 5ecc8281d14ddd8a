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
    assert root.find("Choices") is None
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
        "Model's best guesses: $candidates",
    } <= shown


def test_flat_config_uses_choices() -> None:
    root = ET.fromstring(build_label_config(Taxonomy.from_paths(["Shoes", "Hats & Caps"])))
    control = root.find("Choices")
    assert control is not None
    assert root.find("Taxonomy") is None
    assert [c.get("value") for c in control.findall("Choice")] == ["Hats & Caps", "Shoes"]


@pytest.mark.parametrize("paths", [["A > x", "B > y"], ["Shoes", "Hats"]])
def test_result_round_trips_through_label_from_result(paths: list[str]) -> None:
    tax = Taxonomy.from_paths(paths)
    for label in tax.labels:
        assert label_from_result(tax.result_for(label)) == label
    with pytest.raises(ValueError, match="not one of the taxonomy's 2 categories"):
        tax.result_for("Nope")


def test_label_from_result_ignores_other_controls_and_empty_results() -> None:
    assert label_from_result([]) is None
    assert label_from_result([{"from_name": "other", "value": {"choices": ["X"]}}]) is None
