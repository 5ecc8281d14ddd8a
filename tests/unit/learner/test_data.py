"""Catalog loading, dataset building and the leakage-free split."""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydantic import ValidationError

from learner.data import (
    LabeledDataset,
    Product,
    build_dataset,
    catalog_file,
    catalog_name,
    group_split,
    item_text,
    iter_catalog,
    label_of,
    load_catalog,
    normalize_title,
    write_catalog,
)
from learner.exceptions import CatalogError, RecordProblem

SHARED_DATA = Path(__file__).parents[3].parent / "shared" / "data"
BIGBASKET = SHARED_DATA / "bigbasket" / "products.jsonl"


def record(id_: Any = "p1", title: Any = "Steel Water Bottle", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": id_,
        "title": title,
        "description": "",
        "price": 12.5,
        "brand": "Milton",
        "category": ["Home & Kitchen", "Storage", "Bottles"],
    }
    base.update(fields)
    return base


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------
# Product


def test_product_accepts_a_clean_record_and_normalises_fields() -> None:
    p = Product.model_validate(record(id_=17, title="  Water Bottle ", brand="  ", description=None, price=3))
    assert p.id == "17"
    assert p.title == "Water Bottle"
    assert p.brand is None
    assert p.description == ""
    assert p.price == 3.0
    assert isinstance(p.price, float)
    assert p.category == ["Home & Kitchen", "Storage", "Bottles"]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("id", "", "id is empty"),
        ("id", True, "boolean"),
        ("title", "   ", "title is empty"),
        ("title", None, "title"),
        ("price", float("nan"), "finite"),
        ("price", float("inf"), "finite"),
        ("price", -1.0, ">= 0"),
        ("price", "abc", "must be a number"),
        ("price", "12.5", "must be a number"),
        ("price", True, "must be a number"),
        ("category", "Home > Storage", "must be a list"),
        ("category", ["Home", ""], "level 2 is empty"),
        ("category", ["Home", 3], "level 2 is int"),
        ("brand", 5, "brand"),
    ],
)
def test_product_rejects_bad_fields(field: str, value: Any, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Product.model_validate(record(**{"id_" if field == "id" else field: value}))


@pytest.mark.parametrize("category", [None, [], ["missing", "missing"], ["Missing"]])
def test_unlabeled_markers_become_none(category: Any) -> None:
    p = Product.model_validate(record(category=category))
    assert p.category is None
    assert not p.is_labeled


def test_missing_marker_below_the_top_truncates_the_path() -> None:
    assert Product.model_validate(record(category=["snacks", "missing"])).category == ["snacks"]


def test_product_is_frozen() -> None:
    p = Product.model_validate(record())
    with pytest.raises(ValidationError):
        p.title = "other"  # type: ignore[misc]


def test_text_is_title_then_brand_then_description() -> None:
    full = Product.model_validate(record(description="Keeps water cold."))
    assert full.text == "Steel Water Bottle | brand: Milton | Keeps water cold."
    assert item_text(full) == full.text
    bare = Product.model_validate(record(brand=None))
    assert bare.text == "Steel Water Bottle"


def test_label_of_joins_levels_and_uses_what_a_shallow_item_has() -> None:
    p = Product.model_validate(record())
    assert label_of(p, 1) == "Home & Kitchen"
    assert label_of(p, 2) == "Home & Kitchen > Storage"
    shallow = Product.model_validate(record(category=["Beverages"]))
    assert label_of(shallow, 2) == "Beverages"
    with pytest.raises(ValueError, match="unlabeled"):
        label_of(Product.model_validate(record(category=None)), 2)
    with pytest.raises(ValueError, match="level"):
        label_of(p, 0)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Anti-Hair Fall Shampoo", "anti hair fall  shampoo"),
        ("Organic - Coriander Powder", "organic coriander powder"),
        ("Brass Aarti With Handle,No.3", "brass aarti with handle no 3"),
        ("Ｇｒｅｅｎ Ｔｅａ", "green tea"),  # full-width letters (NFKC)
        ("  Tea\tBags\n", "TEA BAGS"),
    ],
)
def test_normalize_title_collapses_variants(a: str, b: str) -> None:
    assert normalize_title(a) == normalize_title(b)


def test_normalize_title_keeps_distinct_titles_apart_and_keeps_scripts() -> None:
    assert normalize_title("Green Tea") != normalize_title("Green Tea Bags")
    assert normalize_title("Chai 250 g") != normalize_title("Chai 500 g")
    assert normalize_title("हल्दी पाउडर") == "हल्दी पाउडर"  # vowel signs are marks, not punctuation
    assert normalize_title("Café") == "café"


# --------------------------------------------------------------------------------------------------------
# load_catalog

BAD_LINES_EXPECTED = {
    2: "invalid JSON",
    4: "title",
    5: "category",
    6: "price",
    7: "duplicate id 'p1'",
    10: "not an object",
    11: "no category",
    12: "finite",
    13: "id",
}


@pytest.fixture
def messy_jsonl(tmp_path: Path) -> Path:
    lines = [
        json.dumps(record("p1")),  # 1 good
        '{"id": "p2", "title": "broken',  # 2 invalid JSON
        "",  # 3 blank: not a record
        json.dumps(record("p3", title=None)),  # 4 no title
        json.dumps(record("p4", category="Home > Storage")),  # 5 category not a list
        json.dumps(record("p5", price="abc")),  # 6 price not a number
        json.dumps(record("p1", title="Other Bottle")),  # 7 duplicate id, other content
        json.dumps(record("p1")),  # 8 exact repeat of line 1: skipped, not a problem
        json.dumps(record("p9", title="Glass Jar", category=["Home & Kitchen", "Storage"])),  # 9 good
        "[1, 2]",  # 10 not an object
        json.dumps(record("p11", category=["missing", "missing"])),  # 11 unlabeled
        '{"id": "p12", "title": "Lamp", "price": NaN, "category": ["Home"]}',  # 12 NaN price
        json.dumps(record("", title="Nameless")),  # 13 empty id
    ]
    return write_lines(tmp_path / "messy.jsonl", lines)


def test_bad_records_are_reported_with_exact_line_numbers(messy_jsonl: Path) -> None:
    catalog = load_catalog(messy_jsonl, strict=False)
    assert [p.id for p in catalog.products] == ["p1", "p9"]
    assert [problem.line for problem in catalog.problems] == sorted(BAD_LINES_EXPECTED)
    for problem in catalog.problems:
        assert BAD_LINES_EXPECTED[problem.line] in problem.reason, problem
    assert catalog.repeats == [RecordProblem(8, "exact repeat of line 1 (id 'p1')")]


def test_strict_raises_catalog_error_naming_every_line(messy_jsonl: Path) -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(messy_jsonl)
    error = caught.value
    assert error.path == str(messy_jsonl)
    assert [p.line for p in error.problems] == sorted(BAD_LINES_EXPECTED)
    message = str(error)
    assert f"{len(BAD_LINES_EXPECTED)} bad record(s)" in message
    for line in BAD_LINES_EXPECTED:
        assert f"line {line}:" in message
    assert "line 8:" not in message  # the exact repeat is not an error


def test_unlabeled_items_are_products_when_category_is_not_required(messy_jsonl: Path) -> None:
    catalog = load_catalog(messy_jsonl, strict=False, require_category=False)
    assert [p.id for p in catalog.products] == ["p1", "p9", "p11"]
    assert [p.id for p in catalog.unlabeled] == ["p11"]
    assert [p.id for p in catalog.labeled] == ["p1", "p9"]
    assert 11 not in {p.line for p in catalog.problems}


def sample_products() -> list[Product]:
    return [
        Product.model_validate(record("a1", description='Holds 1 L, "leak-proof"', price=None)),
        Product.model_validate(
            record(2, title="Chef's Knife, 8 Inch", brand=None, category=["Kitchen", "Knives"])
        ),
        Product.model_validate(
            record("a3", title="Soap – Rose & Milk", price=0.0, category=["Beauty & Care"])
        ),
        Product.model_validate(
            record("a4", title="Unknown Gadget", category=None, description="line1\nline2")
        ),
        # Unicode line separators inside a string must not split a JSON Lines record.
        Product.model_validate(record("a5", title="Odd\u2028Title\x85Here", category=["Misc"])),
    ]


def write_csv(path: Path, products: list[Product], *, json_category: bool) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "title", "description", "price", "brand", "category"])
        for p in products:
            if p.category is None:
                category = ""
            elif json_category:
                category = json.dumps(p.category)
            else:
                category = " > ".join(p.category)
            price = "" if p.price is None else repr(p.price)
            writer.writerow([p.id, p.title, p.description, price, p.brand or "", category])
    return path


@pytest.mark.parametrize("json_category", [False, True])
def test_csv_and_jsonl_load_the_same_products(tmp_path: Path, json_category: bool) -> None:
    products = sample_products()
    from_jsonl = load_catalog(write_catalog(products, tmp_path / "c.jsonl"), require_category=False)
    from_csv = load_catalog(
        write_csv(tmp_path / "c.csv", products, json_category=json_category), require_category=False
    )
    assert from_jsonl.products == products
    assert from_csv.products == products


def test_csv_problems_carry_the_line_the_record_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "\ufeffid,title,price,category\n"  # 1 header, with a spreadsheet's byte-order mark
        'c1,"Multi\nline title",10,A > B\n'  # 2-3 one record over two lines
        "c2,Kettle,abc,A > B\n"  # 4 bad price
        "c3,,5,A > B\n"  # 5 no title
        "c4,Lamp,5,A > B,extra\n"  # 6 too many fields
        ",,,\n"  # 7 empty row: not a record
        'c5,Pan,,"[""Kitchen"", ""Cookware""]"\n'  # 8 good, JSON category, no price
        'c6,Pot,,"[not json"\n',  # 9 bad JSON list
        encoding="utf-8",
    )
    catalog = load_catalog(path, strict=False)
    assert [p.id for p in catalog.products] == ["c1", "c5"]
    assert catalog.products[0].title == "Multi\nline title"
    assert catalog.products[1].price is None
    assert catalog.products[1].category == ["Kitchen", "Cookware"]
    assert [(p.line, p.reason.split(":")[0]) for p in catalog.problems] == [
        (4, "price"),
        (5, "title"),
        (6, "5 fields, but the header has 4"),
        (9, "category"),
    ]


def test_csv_without_required_columns_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nocols.csv"
    path.write_text("sku,name\n1,Kettle\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="line 1: CSV header lacks column"):
        load_catalog(path)


def test_file_level_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="catalog file not found"):
        load_catalog(tmp_path / "absent.jsonl")
    (tmp_path / "items.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported catalog format '\.parquet'"):
        load_catalog(tmp_path / "items.parquet")
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(record()).encode() + b"\n" + b'{"title": "Caf\xe9"}\n')
    with pytest.raises(CatalogError, match="line 2: not valid UTF-8"):
        load_catalog(tmp_path / "latin1.jsonl")


def test_a_catalog_streams_one_record_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    lines = [json.dumps(record("a1")), json.dumps(record("a2", category=None)), json.dumps(record("a1"))]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"title": "Caf\xe9"}\n')
    records = iter_catalog(path, require_category=False)
    first = next(records)  # read before the bad byte further down is reached
    assert (first.line, first.product is not None) == (1, True)
    second = next(records)
    assert second.product is not None
    assert second.product.category is None
    repeat = next(records)
    assert (repeat.line, repeat.repeat, repeat.product) == (3, True, None)
    with pytest.raises(CatalogError, match="line 4: not valid UTF-8"):
        next(records)


def test_json_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "array.json", ["[", json.dumps(record()) + ",", "]"])
    catalog = load_catalog(path, strict=False)
    assert "expected one object per line" in catalog.problems[0].reason


def test_empty_file_is_an_empty_catalog(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    catalog = load_catalog(tmp_path / "empty.jsonl")
    assert len(catalog) == 0
    assert catalog.problems == []


# --------------------------------------------------------------------------------------------------------
# build_dataset


def catalog_of(sizes: dict[tuple[str, ...], int], *, titles_per_group: int = 1) -> list[Product]:
    """`sizes[path]` items per category; every `titles_per_group` consecutive items share a title."""
    products = []
    for path, n in sizes.items():
        for i in range(n):
            products.append(
                Product(
                    id=f"{'/'.join(path)}-{i}",
                    title=f"{path[-1]} item {i // titles_per_group}",
                    price=float(i),
                    brand=None if i % 3 else "Acme",
                    category=list(path),
                )
            )
    return products


def test_build_dataset_drops_small_classes_and_unlabeled_items() -> None:
    products = catalog_of({("A", "x"): 30, ("A", "y"): 10, ("B", "z"): 4})
    products.append(Product(id="u1", title="Mystery", category=None))
    data = build_dataset(products, level=2, min_class_size=5)
    assert data.classes == ("A > x", "A > y")
    assert len(data) == 40
    assert data.dropped_classes == {"B > z": 4}
    assert data.n_unlabeled == 1
    assert Counter(data.labels.tolist()) == {"A > x": 30, "A > y": 10}
    # Row i of every array is the same product.
    first = products[0]
    assert data.ids[0] == first.id
    assert data.texts[0] == first.text
    assert data.brands[0] == "Acme"
    assert data.brands[1] is None
    assert data.groups[0] == normalize_title(first.title)
    assert data.prices.dtype == np.float64


def test_build_dataset_level_one_merges_siblings() -> None:
    products = catalog_of({("A", "x"): 3, ("A", "y"): 3, ("B", "z"): 2})
    data = build_dataset(products, level=1, min_class_size=3)
    assert data.classes == ("A",)
    assert data.dropped_classes == {"B": 2}


def test_build_dataset_missing_prices_are_nan() -> None:
    products = [
        Product(id="1", title="t", price=None, category=["A"]),
        Product(id="2", title="u", category=["A"]),
    ]
    data = build_dataset(products, level=1, min_class_size=1)
    assert np.isnan(data.prices).all()


def test_build_dataset_rejects_nothing_left_and_bad_arguments() -> None:
    products = catalog_of({("A", "x"): 3})
    with pytest.raises(ValueError, match="no class has >= 10 items"):
        build_dataset(products, level=2, min_class_size=10)
    with pytest.raises(ValueError, match="level"):
        build_dataset(products, level=0, min_class_size=1)
    with pytest.raises(ValueError, match="min_class_size"):
        build_dataset(products, level=1, min_class_size=0)


def test_subset_keeps_the_class_vocabulary() -> None:
    data = build_dataset(catalog_of({("A", "x"): 4, ("A", "y"): 4}), level=2, min_class_size=1)
    only_y = data.subset(np.flatnonzero(data.labels == "A > y"))
    assert len(only_y) == 4
    assert only_y.classes == ("A > x", "A > y")
    assert only_y.y.tolist() == [1, 1, 1, 1]
    assert data.y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert data.subset([3, 0]).ids.tolist() == [data.ids[3], data.ids[0]]


def test_labeled_dataset_validates_its_arrays() -> None:
    strings = np.array(["a", "b"], dtype=object)
    with pytest.raises(ValueError, match="rows"):
        LabeledDataset(strings, strings, strings, np.zeros(3), strings, strings)
    with pytest.raises(ValueError, match="not in classes"):
        LabeledDataset(strings, strings, strings, np.zeros(2), strings, strings, classes=("a",))


# --------------------------------------------------------------------------------------------------------
# group_split


def assert_valid_split(data: LabeledDataset, parts: tuple[NDArray[np.int64], ...]) -> None:
    every = np.concatenate(parts)
    assert np.array_equal(np.sort(every), np.arange(len(data))), "rows missing or repeated"
    group_sets = [set(data.groups[part].tolist()) for part in parts]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not group_sets[i] & group_sets[j], "a title group is in two parts"


def bigbasket_like() -> LabeledDataset:
    """Many pack-size repeats: titles repeated up to 6 times with case/spacing variants."""
    products = []
    rng = np.random.default_rng(7)
    sizes = {"Beauty > Skin Care": 60, "Beauty > Hair Care": 40, "Kitchen > Storage": 25, "Kitchen > Bins": 6}
    n = 0
    for label, n_titles in sizes.items():
        for t in range(n_titles):
            title = f"{label.split(' > ')[1]} Product {t} - Classic"
            for k in range(int(rng.integers(1, 7))):
                variant = [title, title.upper(), title.replace(" - ", "-"), f"  {title}  "][k % 4]
                products.append(
                    Product(id=str(n), title=variant, price=10.0 * (k + 1), category=label.split(" > "))
                )
                n += 1
    return build_dataset(products, level=2, min_class_size=1)


def test_group_split_has_no_leakage_and_covers_every_row_once() -> None:
    data = bigbasket_like()
    assert len(set(data.groups.tolist())) < len(data) / 2  # really heavily duplicated
    split = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=0)
    assert_valid_split(data, (split.train, split.calibration, split.test))
    for part in (split.train, split.calibration, split.test):
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


def test_group_split_respects_fractions_and_stratifies() -> None:
    data = bigbasket_like()
    split = group_split(data, calibration_fraction=0.2, test_fraction=0.25, seed=3)
    n = len(data)
    assert len(split.calibration) / n == pytest.approx(0.2, abs=0.05)
    assert len(split.test) / n == pytest.approx(0.25, abs=0.05)
    assert split.sizes == {
        "train": len(split.train),
        "calibration": len(split.calibration),
        "test": len(split.test),
    }
    # Every class, even "Kitchen > Bins" with 6 titles, is in every part.
    for part in (split.train, split.calibration, split.test):
        assert set(data.labels[part].tolist()) == set(data.classes)


def test_group_split_small_classes_go_to_train_first() -> None:
    data = build_dataset(
        catalog_of({("A", "big"): 50, ("A", "one"): 1, ("A", "two"): 2}), level=2, min_class_size=1
    )
    split = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=0)
    assert "A > one" in data.labels[split.train]
    two = {name: int(np.sum(data.labels[getattr(split, name)] == "A > two")) for name in split.sizes}
    assert two == {"train": 1, "calibration": 1, "test": 0}


def test_group_split_is_deterministic_per_seed() -> None:
    data = bigbasket_like()
    a = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=11)
    b = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=11)
    c = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=12)
    for part in ("train", "calibration", "test"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)


def test_group_split_zero_fraction_leaves_a_part_empty() -> None:
    data = bigbasket_like()
    split = group_split(data, calibration_fraction=0.0, test_fraction=0.3, seed=0)
    assert len(split.calibration) == 0
    assert_valid_split(data, (split.train, split.calibration, split.test))


@pytest.mark.parametrize(("cal", "test"), [(0.5, 0.5), (0.7, 0.4), (-0.1, 0.2), (0.2, 1.0), (math.nan, 0.2)])
def test_group_split_rejects_bad_fractions(cal: float, test: float) -> None:
    data = build_dataset(catalog_of({("A", "x"): 5}), level=2, min_class_size=1)
    with pytest.raises(ValueError, match="fraction"):
        group_split(data, calibration_fraction=cal, test_fraction=test, seed=0)


@settings(max_examples=30, deadline=None)
@given(
    group_sizes=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3)), min_size=1, max_size=40),
    cal=st.floats(0.0, 0.45),
    test=st.floats(0.0, 0.45),
    seed=st.integers(0, 2**32 - 1),
)
def test_group_split_properties(
    group_sizes: list[tuple[int, int]], cal: float, test: float, seed: int
) -> None:
    products = [
        Product(id=f"{g}-{k}", title=f"Title {g}", category=["C", str(label)])
        for g, (size, label) in enumerate(group_sizes)
        for k in range(size)
    ]
    data = build_dataset(products, level=2, min_class_size=1)
    split = group_split(data, calibration_fraction=cal, test_fraction=test, seed=seed)
    assert_valid_split(data, (split.train, split.calibration, split.test))
    assert set(data.labels[split.train].tolist()) == set(data.classes)  # every class is trainable
    if cal == 0:
        assert len(split.calibration) == 0
    if test == 0:
        assert len(split.test) == 0


# --------------------------------------------------------------------------------------------------------
# The real BigBasket catalog, when this checkout sits next to the shared data


@pytest.mark.skipif(not BIGBASKET.exists(), reason=f"real data not present at {BIGBASKET}")
def test_bigbasket_loads_cleanly_and_splits_without_title_leakage() -> None:
    started = time.perf_counter()
    catalog = load_catalog(BIGBASKET)
    assert catalog.problems == []
    # The file ends with 6 exact repeats (lines 27555-27560 = lines 27543-27548): skipped, reported.
    assert [r.line for r in catalog.repeats] == list(range(27555, 27561))
    assert len(catalog) == 27_554
    data = build_dataset(catalog.products, level=2, min_class_size=200)
    # data/README.md says 23,916 items: it counts the 6 repeats, all in kept classes.
    assert len(data.classes) == 46
    assert len(data) == 23_910
    split = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=0)
    assert time.perf_counter() - started < 10
    assert_valid_split(data, (split.train, split.calibration, split.test))
    for part in (split.train, split.calibration, split.test):
        assert set(data.labels[part].tolist()) == set(data.classes)
    assert len(split.test) / len(data) == pytest.approx(0.2, abs=0.02)
    # Case-insensitive repeated titles (the README's 4,061 repeats) never cross parts.
    part_of = {}
    for name in ("train", "calibration", "test"):
        for row in getattr(split, name):
            part_of[row] = name
    by_title: dict[str, set[str]] = {}
    for row, text in enumerate(data.texts):
        title = str(text).split(" | brand: ")[0].lower()
        by_title.setdefault(title, set()).add(part_of[row])
    assert all(len(parts) == 1 for parts in by_title.values())


def test_product_text_is_masked_and_ids_and_titles_are_clean() -> None:
    # Issue #12.3 / #12.8: personal data never leaves the record; invisible titles and control
    # characters in ids are refused.
    product = Product(id="p1", title="Mug, mail me at jane@example.com", description="call +1 (415) 555-2671")
    assert product.title == "Mug, mail me at [EMAIL]"
    assert product.description == "call [PHONE]"
    for bad in (
        {"id": "a\x07", "title": "t"},
        {"id": "a", "title": "\u200b\u200b"},
        {"id": "a", "title": "\ud800"},
    ):
        with pytest.raises(ValidationError):
            Product(**bad)


def test_brand_in_text_reads_back_the_brand_product_text_wrote() -> None:
    from learner.data import brand_in_text

    assert brand_in_text(Product(id="1", title="Kettle | steel", brand="Prestige").text) == "Prestige"
    assert brand_in_text(Product(id="2", title="Kettle", description="steel, 1.5 l").text) is None
    assert brand_in_text(Product(id="3", title="Kettle", brand="Bosch", description="d").text) == "Bosch"


def test_catalogs_are_named_by_their_folder_when_every_file_is_products_jsonl(tmp_path: Path) -> None:
    # Both shared catalogs are <name>/products.jsonl: named by the stem, their experiment folders
    # (<state_dir>/experiments/<catalog>) were one and the same, and one run overwrote the other.
    assert catalog_name(catalog_file(tmp_path, "bigbasket")) == "bigbasket"
    assert catalog_name(catalog_file(tmp_path, "instacart")) == "instacart"
    assert catalog_file(tmp_path, "bigbasket") == tmp_path / "bigbasket" / "products.jsonl"
    assert catalog_name(tmp_path / "shoes.jsonl") == "shoes"
    assert catalog_name(Path("shoes.csv")) == "shoes"
    assert catalog_name(Path("products.jsonl")) == "products"  # no folder to name it by


def test_csv_lines_may_end_in_a_bare_cr_and_what_csv_cannot_parse_is_a_problem_on_its_line(
    tmp_path: Path,
) -> None:
    mac = tmp_path / "mac.csv"  # a spreadsheet's "CSV (Macintosh)"
    mac.write_bytes(b"id,title,category\r1,Apple,Food > Fruit\r2,Pear,Food > Fruit\r")
    assert [p.id for p in load_catalog(mac).products] == ["1", "2"]
    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes(b"id,title,category\n1,Apple,Food > Fruit\r\n2,Pe\rar,Food > Fruit\n3,Fig,Food\n")
    catalog = load_catalog(mixed, strict=False)  # a bare CR in a cell ends the line, as it always did
    assert [p.id for p in catalog.products] == ["1", "3"]
    assert [p.line for p in catalog.problems] == [3, 4]

    huge = tmp_path / "huge.csv"
    huge.write_text(f'id,title,description\n1,Kettle,"{"x" * 200_000}"\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="line 2: CSV: field larger than field limit"):
        load_catalog(huge)


def test_a_bad_price_is_quoted_with_personal_data_masked(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "a", "title": "Mug", "price": "call jane.doe@example.com", "category": ["A"]}\n')
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("id,title,price,category\nb,Kettle,ask jane.doe@example.com,A\n")
    for path in (jsonl, csv_file):
        (problem,) = load_catalog(path, strict=False).problems
        assert "jane.doe@example.com" not in problem.reason
        assert "[EMAIL]" in problem.reason


def test_category_levels_are_checked_like_every_other_text(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    lines = [
        {"id": "a", "title": "Mug", "category": ["Home", "Cables > 2m"]},
        {"id": "b", "title": "Kettle", "category": ["Home", "A\u0000B"]},
        {"id": "c", "title": "Lamp", "category": ["Home", "Lights"]},
    ]
    jsonl.write_text(
        "\n".join(json.dumps(line) for line in lines)
        + '\n{"id": "d", "title": "x", "category": ["B\\ud800"]}\n'
    )
    catalog = load_catalog(jsonl, strict=False)
    assert [p.id for p in catalog.products] == ["c"]
    reasons = {problem.line: problem.reason for problem in catalog.problems}
    assert "level separator" in reasons[1]
    assert "NUL" in reasons[2]
    assert "surrogate" in reasons[4]


def test_a_csv_category_cell_json_cannot_read_is_a_problem_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    rows = ["id,title,category", "a,Mug,Home > Mugs", f'b,Kettle,"[{"1" * 5000}]"', f"c,Lamp,{'[' * 100_000}"]
    path.write_text("\n".join(rows) + "\n")
    catalog = load_catalog(path, strict=False)
    assert [p.id for p in catalog.products] == ["a"]
    assert [problem.line for problem in catalog.problems] == [3, 4]
    assert all("not a JSON list" in problem.reason for problem in catalog.problems)


def test_titles_without_letters_or_digits_are_each_their_own_group() -> None:
    products = [
        Product(id=f"p{i}", title=t, category=["A" if i % 2 else "B"])
        for i, t in enumerate(["🎉", "!!!", "★", "Mug"] * 5)
    ]
    dataset = build_dataset(products, level=1, min_class_size=1)
    assert len(set(dataset.groups)) == 16  # 15 keyless titles apart, the 5 "Mug" together
