"""The Label Studio labeling config, generated from the taxonomy.

A taxonomy is a list of category paths, each a `list[str]` or a `" > "`-joined string. Hierarchical
taxonomies (any path deeper than one level) use Label Studio's `<Taxonomy>` tag, flat ones `<Choices>`.
Names are XML-escaped: Label Studio answers 400 to a raw "Home & Kitchen".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from xml.sax.saxutils import quoteattr

SEPARATOR = " > "
FROM_NAME = "category"  # the whole taxonomy
SUGGESTION_NAME = "suggestion"  # the model's best categories, one click each (task data `suggestions`)
TO_NAME = "title"


def _split(path: Sequence[str] | str) -> tuple[str, ...]:
    if not isinstance(path, str | list | tuple):
        raise ValueError(f"a category path is a string or a list of names, not {type(path).__name__}")
    parts = path.split(SEPARATOR) if isinstance(path, str) else list(path)
    if not all(isinstance(p, str) for p in parts):
        raise ValueError(f"a category path holds names (strings), got {path!r:.80}")
    cleaned = tuple(p.strip() for p in parts)
    if not cleaned or any(not p for p in cleaned):
        raise ValueError(f"empty category name in path {path!r}")
    for name in cleaned:
        # Labels are the names joined by the separator: a name holding it could never be read back,
        # and every review of it would be rejected.
        if SEPARATOR in name:
            raise ValueError(f"category name {name!r:.80} holds the level separator {SEPARATOR!r}")
    return cleaned


@dataclass(frozen=True)
class Taxonomy:
    """The categories merchandisers may choose, as paths (root first), in a stable order."""

    paths: tuple[tuple[str, ...], ...]

    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[str] | str]) -> Taxonomy:
        seen: dict[tuple[str, ...], None] = {}
        for path in paths:
            seen.setdefault(_split(path), None)
        if not seen:
            raise ValueError("the taxonomy has 0 categories; at least 1 is needed")
        ordered = tuple(sorted(seen))
        as_set = set(ordered)
        for path in ordered:
            # A path that is also a prefix of another is an inner node, not a selectable leaf.
            if any(other[: len(path)] == path and other != path for other in as_set):
                raise ValueError(
                    f"category {SEPARATOR.join(path)!r} is both a leaf and the parent of another category"
                )
        return cls(ordered)

    @property
    def hierarchical(self) -> bool:
        return any(len(p) > 1 for p in self.paths)

    @property
    def labels(self) -> tuple[str, ...]:
        """Canonical label strings (`" > "`-joined paths)."""
        return tuple(SEPARATOR.join(p) for p in self.paths)

    def __contains__(self, label: object) -> bool:
        if isinstance(label, str):
            return tuple(p.strip() for p in label.split(SEPARATOR)) in set(self.paths)
        return False

    def __len__(self) -> int:
        return len(self.paths)

    def result_for(self, label: str, *, suggested: bool = False) -> list[dict[str, Any]]:
        """A Label Studio `result` selecting `label` (used for pre-annotations): in the whole taxonomy,
        or (`suggested`) among the task's one-click suggestions, which must then hold `label`."""
        path = _split(label)
        if path not in set(self.paths):
            raise ValueError(f"label {label!r} is not one of the taxonomy's {len(self.paths)} categories")
        if suggested:
            return [
                {
                    "from_name": SUGGESTION_NAME,
                    "to_name": TO_NAME,
                    "type": "choices",
                    "value": {"choices": [SEPARATOR.join(path)]},
                }
            ]
        if self.hierarchical:
            return [
                {
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": "taxonomy",
                    "value": {"taxonomy": [list(path)]},
                }
            ]
        return [
            {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [path[0]]}}
        ]


def suggestions_data(candidates: Sequence[tuple[str, float]]) -> list[dict[str, str]]:
    """The task data of the one-click suggestions: each option's value is the category, its label
    shows the model's probability ("Home &amp; Kitchen > Cookware · 62%": HTML-escaped)."""
    return [{"value": label, "html": f"{escape(label)} · {p:.0%}"} for label, p in candidates]


def _chosen(region: dict[str, Any]) -> str | None:
    value = region.get("value") or {}
    taxonomy = value.get("taxonomy")
    if taxonomy:
        return SEPARATOR.join(str(p) for p in taxonomy[0])
    choices = value.get("choices")
    if choices:
        return str(choices[0])
    return None


def label_from_result(result: Sequence[dict[str, Any]]) -> str | None:
    """The chosen category of an annotation `result` as a `" > "`-joined path; None if none was chosen.

    A category picked in the whole taxonomy wins over the one-click suggestions: the best suggestion
    comes pre-selected, so a reviewer who disagrees with all of them picks another category there.
    """
    by_control: dict[str, str] = {}
    for region in result:
        name = region.get("from_name")
        chosen = _chosen(region) if name in (FROM_NAME, SUGGESTION_NAME) else None
        if chosen is not None and isinstance(name, str):
            by_control.setdefault(name, chosen)
    return by_control.get(FROM_NAME) or by_control.get(SUGGESTION_NAME)


def _tree(paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for part in path:
            node = node.setdefault(part, {})
    return root


def _choices_xml(tree: dict[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    for name, children in tree.items():
        if children:
            lines.append(f"{indent}<Choice value={quoteattr(name)}>")
            lines.extend(_choices_xml(children, indent + "  "))
            lines.append(f"{indent}</Choice>")
        else:
            lines.append(f"{indent}<Choice value={quoteattr(name)}/>")
    return lines


def build_label_config(taxonomy: Taxonomy) -> str:
    """The XML labeling config: the item's fields, why it was escalated, the model's best categories as
    one-click choices (the first pre-selected), similar items that people labelled, and the whole
    taxonomy for any other category."""
    # Each field once: the title (what the category controls label), then brand, price, description,
    # and why the item is here in plain words.
    head = [
        "<View>",
        f'  <Text name="{TO_NAME}" value="$title"/>',
        '  <View style="display: flex; gap: 2em">',
        '    <Text name="brand" value="Brand: $brand"/>',
        '    <Text name="price" value="Price: $price"/>',
        "  </View>",
        '  <Text name="description" value="$description"/>',
        '  <Text name="reason" value="Why it is here: $reason"/>',
        '  <Header value="The model\'s best guesses (one click):" size="5"/>',
        f'  <Choices name="{SUGGESTION_NAME}" toName="{TO_NAME}" choice="single" value="$suggestions"/>',
        '  <Text name="similar" value="Similar items people labelled: $similar"/>',
        '  <Header value="None of them? Choose the category:" size="5"/>',
    ]
    if taxonomy.hierarchical:
        control = [
            f'  <Taxonomy name="{FROM_NAME}" toName="{TO_NAME}" leafsOnly="true" maxUsages="1">',
            *_choices_xml(_tree(taxonomy.paths), "    "),
            "  </Taxonomy>",
        ]
    else:
        control = [
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single">',
            *_choices_xml(_tree(taxonomy.paths), "    "),
            "  </Choices>",
        ]
    return "\n".join([*head, *control, "</View>"]) + "\n"
