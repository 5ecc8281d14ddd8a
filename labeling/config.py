"""The Label Studio labeling config, generated from the taxonomy.

A taxonomy is a list of category paths, each a `list[str]` or a `" > "`-joined string. Hierarchical
taxonomies (any path deeper than one level) use Label Studio's `<Taxonomy>` tag, flat ones `<Choices>`.
Names are XML-escaped: Label Studio answers 400 to a raw "Home & Kitchen".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

SEPARATOR = " > "
FROM_NAME = "category"
TO_NAME = "title"

# Task data keys the config shows; `push` fills them.
DATA_FIELDS = ("title", "description", "brand", "price", "reason", "candidates")


def _split(path: Sequence[str] | str) -> tuple[str, ...]:
    parts = path.split(SEPARATOR) if isinstance(path, str) else list(path)
    cleaned = tuple(str(p).strip() for p in parts)
    if not cleaned or any(not p for p in cleaned):
        raise ValueError(f"empty category name in path {path!r}")
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

    def result_for(self, label: str) -> list[dict[str, Any]]:
        """A Label Studio `result` selecting `label` (used for pre-annotations)."""
        path = _split(label)
        if path not in set(self.paths):
            raise ValueError(f"label {label!r} is not one of the taxonomy's {len(self.paths)} categories")
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


def label_from_result(result: Sequence[dict[str, Any]]) -> str | None:
    """The chosen category of an annotation `result` as a `" > "`-joined path; None if none was chosen."""
    for region in result:
        if region.get("from_name") != FROM_NAME:
            continue
        value = region.get("value") or {}
        taxonomy = value.get("taxonomy")
        if taxonomy:
            return SEPARATOR.join(str(p) for p in taxonomy[0])
        choices = value.get("choices")
        if choices:
            return str(choices[0])
    return None


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
    """The XML labeling config: the item's fields, why it was escalated, and the category control."""
    # Each field once: the title (what the category control labels), then brand, price, description,
    # why the item is here in plain words, and the model's best guesses (the first is pre-selected).
    head = [
        "<View>",
        f'  <Text name="{TO_NAME}" value="$title"/>',
        '  <View style="display: flex; gap: 2em">',
        '    <Text name="brand" value="Brand: $brand"/>',
        '    <Text name="price" value="Price: $price"/>',
        "  </View>",
        '  <Text name="description" value="$description"/>',
        '  <Text name="reason" value="Why it is here: $reason"/>',
        '  <Text name="candidates" value="Model\'s best guesses: $candidates"/>',
    ]
    if taxonomy.hierarchical:
        control = [
            f'  <Taxonomy name="{FROM_NAME}" toName="{TO_NAME}" leafsOnly="true" maxUsages="1">',
            *_choices_xml(_tree(taxonomy.paths), "    "),
            "  </Taxonomy>",
        ]
    else:
        control = [
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" required="true">',
            *_choices_xml(_tree(taxonomy.paths), "    "),
            "  </Choices>",
        ]
    return "\n".join([*head, *control, "</View>"]) + "\n"
