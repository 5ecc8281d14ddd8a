"""Product records, catalog loading, labelled datasets and leakage-free splits.

The pipeline from a file on disk to train / calibration / test index arrays:

    catalog = load_catalog("products.jsonl")                          # typed, validated records
    data = build_dataset(catalog.products, level=2, min_class_size=20)
    split = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=0)
    train = data.subset(split.train)

Everything here takes plain parameters: no settings object, no I/O beyond the catalog file.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from learner.exceptions import CatalogError, RecordProblem
from learner.files import replaced_atomically
from learner.pii import mask_pii

__all__ = [
    "LABEL_SEPARATOR",
    "UNLABELED_MARKER",
    "Catalog",
    "DatasetSplit",
    "LabeledDataset",
    "Product",
    "build_dataset",
    "check_identifier",
    "check_text",
    "group_split",
    "has_visible_text",
    "item_text",
    "label_of",
    "load_catalog",
    "normalize_title",
    "write_catalog",
]

logger = logging.getLogger(__name__)

LABEL_SEPARATOR = " > "
# Instacart marks products without an aisle/department as ["missing", "missing"].
UNLABELED_MARKER = "missing"

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
CSV_SUFFIXES = frozenset({".csv"})
CSV_REQUIRED_COLUMNS = ("id", "title")


# --------------------------------------------------------------------------------------------------------
# Text hygiene: one home for what a stored, pushed or featurized string may contain

MAX_ID_LENGTH = 255
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")


def _quoted(value: Any, limit: int = 40) -> str:
    """A bad value as a problem message quotes it: personal data masked (messages reach terminals and
    logs), cut to ``limit`` characters."""
    text = mask_pii(str(value))
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_text(value: str, name: str) -> str:
    """``value`` unchanged, or ValueError naming ``name`` when it cannot be stored as UTF-8 (a lone
    surrogate such as ``"\\ud800"``: JSON allows it, every database and encoder downstream refuses it)
    or holds a NUL."""
    bad = _UNSTORABLE.search(value)
    if bad is None:
        return value
    ch, position = bad.group(), bad.start()
    if ch == "\x00":
        raise ValueError(f"{name} contains a NUL character at position {position}")
    raise ValueError(f"{name} is not valid UTF-8: lone surrogate U+{ord(ch):04X} at position {position}")


def drop_unstorable(value: str) -> str:
    """``value`` without the characters `check_text` refuses (NULs, lone surrogates): for text that is
    only read to be scored, where refusing it would leave a reviewer without a pre-annotation."""
    return _UNSTORABLE.sub("", value)


def has_visible_text(value: str) -> bool:
    """True when ``value`` has a letter, digit, mark, punctuation or symbol: a title of zero-width
    spaces or control characters only is empty."""
    return any(unicodedata.category(ch)[0] in "LNMPS" for ch in value)


def clean_text(value: str, name: str) -> str:
    """Free text as it is stored, pushed and featurized: checked (`check_text`), stripped, and
    masked (`learner.pii.mask_pii`)."""
    return mask_pii(check_text(value, name).strip())


def clean_title(value: str) -> str:
    """`clean_text` for a title, which must have a visible character."""
    title = clean_text(value, "title")
    if not has_visible_text(title):
        raise ValueError("title is empty (no visible character)")
    return title


def check_identifier(value: str, name: str = "id") -> str:
    """``value`` stripped, or ValueError: empty, longer than `MAX_ID_LENGTH`, or holding control or
    format characters (ids travel into URLs, logs and Label Studio, where those hide or break)."""
    value = check_text(value, name).strip()
    if not value:
        raise ValueError(f"{name} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{name} is {len(value)} characters long; at most {MAX_ID_LENGTH}")
    for position, ch in enumerate(value):
        if unicodedata.category(ch) in ("Cc", "Cf"):
            raise ValueError(
                f"{name} contains control or format character U+{ord(ch):04X} at position {position}"
            )
    return value


# --------------------------------------------------------------------------------------------------------
# Records


class Product(BaseModel):
    """One catalog item, validated at the boundary.

    `category` is the path from the root of the taxonomy (``["Audio", "Headphones"]``), or None for an
    unlabeled item: None, ``[]`` and Instacart's ``["missing", ...]`` marker all become None, and a
    ``"missing"`` level further down truncates the path there.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    title: str
    description: str = ""
    price: float | None = None
    brand: str | None = None
    category: list[str] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        # Integer ids are common in CSV exports and spreadsheets; bools are ints in Python but never ids.
        if isinstance(value, bool):
            raise ValueError("id must be a string or an integer, not a boolean")
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            value = check_identifier(value, "id")
        return value

    @field_validator("title", mode="before")
    @classmethod
    def _title(cls, value: Any) -> Any:
        return clean_title(value) if isinstance(value, str) else value

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, value: Any) -> Any:
        if value is None:
            return ""
        return clean_text(value, "description") if isinstance(value, str) else value

    @field_validator("price", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Any:
        if value is None:
            return None
        # Pydantic's lax mode would turn True into 1.0 and "12" into 12.0; in a JSON record both mean the
        # producer is broken, so only real numbers pass. CSV cells are parsed before they get here.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"price must be a number or null, got {type(value).__name__} {_quoted(value)}")
        try:
            price = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError("price must be finite, got an integer too large for a number") from None
        if not math.isfinite(price):
            raise ValueError(f"price must be finite, got {price}")
        if price < 0:
            raise ValueError(f"price must be >= 0, got {price}")
        return price

    @field_validator("brand", mode="before")
    @classmethod
    def _brand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return clean_text(value, "brand") or None
        return value

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise ValueError(f"category must be a list of strings or null, got {type(value).__name__}")
        levels: list[str] = []
        for position, level in enumerate(value, start=1):
            if not isinstance(level, str):
                raise ValueError(f"category level {position} is {type(level).__name__}, not a string")
            level = check_text(level, f"category level {position}").strip()
            if not level:
                raise ValueError(f"category level {position} is empty")
            if LABEL_SEPARATOR in level:  # labels join the levels with it: it could not be read back
                raise ValueError(
                    f"category level {position} holds the level separator {LABEL_SEPARATOR!r}; "
                    "give each level as its own list item"
                )
            if level.casefold() == UNLABELED_MARKER:
                break
            levels.append(level)
        return levels or None

    @property
    def is_labeled(self) -> bool:
        return self.category is not None

    @property
    def text(self) -> str:
        """The model input: title, then brand and description when present.

        Format (stable: cached embeddings are keyed on it): ``"<title> | brand: <brand> | <description>"``,
        leaving out the parts that are absent.
        """
        parts = [self.title]
        if self.brand:
            parts.append(f"{BRAND_PREFIX}{self.brand}")
        if self.description:
            parts.append(self.description)
        return TEXT_SEPARATOR.join(parts)


# The parts of `Product.text`.
TEXT_SEPARATOR = " | "
BRAND_PREFIX = "brand: "


def brand_in_text(text: str) -> str | None:
    """The brand of a `Product.text` (None when it has none): the first part after the title that
    starts with ``"brand: "``."""
    for part in text.split(TEXT_SEPARATOR)[1:]:
        if part.startswith(BRAND_PREFIX):
            return part[len(BRAND_PREFIX) :].strip() or None
    return None


def item_text(product: Product) -> str:
    """The model input for `product`; same as `product.text`."""
    return product.text


def label_of(product: Product, level: int) -> str:
    """The class label of `product` at taxonomy depth `level`: ``" > ".join(category[:level])``.

    A product whose category has fewer than `level` levels gets the label of the levels it has
    (``["Beverages"]`` at level 2 is ``"Beverages"``): a shallow item stays usable and forms its own
    class rather than disappearing. Raises ValueError for an unlabeled product or `level` < 1.
    """
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    if product.category is None:
        raise ValueError(f"product {product.id!r} is unlabeled")
    return LABEL_SEPARATOR.join(product.category[:level])


def normalize_title(title: str) -> str:
    """Group key for near-identical titles: NFKC, casefolded, punctuation and symbols as spaces.

    ``"Anti-Hair Fall  Shampoo"`` and ``"anti hair fall shampoo"`` give the same key, so BigBasket's
    pack-size repeats (same title, other size) land in one group and never straddle a split.
    Letters, digits and combining marks (Devanagari vowel signs) are kept.
    """
    text = unicodedata.normalize("NFKC", title).casefold()
    if text.isascii():
        # Same result as the general path (ASCII letters and digits are the only L/N characters there),
        # in C: most catalogs are ASCII and this runs once per item.
        kept = _ASCII_NON_ALNUM.sub(" ", text)
    else:
        kept = "".join(ch if unicodedata.category(ch)[0] in "LNM" else " " for ch in text)
    return " ".join(kept.split())


_ASCII_NON_ALNUM = re.compile(r"[^a-z0-9]+")


# --------------------------------------------------------------------------------------------------------
# Catalog files


@dataclass(frozen=True)
class Catalog:
    """The valid products of one file, plus every record that was not accepted.

    problems: bad records (line, reason); empty unless `load_catalog(strict=False)` was used.
    repeats: exact repeats of an earlier record (same id, same content), skipped without being a
        problem; kept here so the caller can report them.
    """

    path: str
    products: list[Product]
    problems: list[RecordProblem] = field(default_factory=list)
    repeats: list[RecordProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.products)

    @property
    def labeled(self) -> list[Product]:
        return [p for p in self.products if p.category is not None]

    @property
    def unlabeled(self) -> list[Product]:
        return [p for p in self.products if p.category is None]


# How catalogs are laid out on disk: one folder per catalog, named after it, holding this file
# (shared/data/bigbasket/products.jsonl).
CATALOG_FILE = "products.jsonl"


def catalog_file(data_dir: str | os.PathLike[str], name: str) -> Path:
    """The catalog called `name` under `data_dir` (``<data_dir>/<name>/products.jsonl``)."""
    return Path(data_dir) / name / CATALOG_FILE


def catalog_name(path: str | os.PathLike[str]) -> str:
    """What to call the catalog at `path` (in output folders, run headers): its folder's name for a
    ``<name>/products.jsonl``, where every catalog has the same file name, else the file's stem."""
    file = Path(path)
    if file.name == CATALOG_FILE and file.parent.name not in ("", ".", ".."):
        return file.parent.name
    return file.stem


def load_catalog(
    path: str | os.PathLike[str], *, require_category: bool = True, strict: bool = True
) -> Catalog:
    """Read and validate a product catalog.

    Formats, by suffix: ``.jsonl`` / ``.ndjson`` / ``.json`` (one JSON object per line) and ``.csv``
    (header with at least ``id,title``; optional ``description,price,brand,category``; category is
    ``"A > B"`` or a JSON list; an empty cell means absent).

    Every bad record becomes a RecordProblem with its 1-based line number (for CSV the line the record
    starts on, header = line 1): invalid JSON, missing/empty title or id, category not a list, price not
    a number, a duplicate id with different content (the first occurrence is kept) and, when
    `require_category`, an unlabeled item. An exact repeat of an earlier record is skipped and listed in
    `Catalog.repeats`, not a problem.

    Parameters
    ----------
    path : catalog file.
    require_category : an unlabeled item is a problem (training data) instead of a product (a pool).
    strict : raise CatalogError listing the problems; otherwise return them in `Catalog.problems`.

    Raises
    ------
    FileNotFoundError : `path` does not exist.
    ValueError : the suffix is not a supported format.
    CatalogError : strict and some record is bad, or the file itself is unreadable (not UTF-8, a CSV
        without the required columns).
    """
    products: list[Product] = []
    problems: list[RecordProblem] = []
    repeats: list[RecordProblem] = []
    for entry in iter_catalog(path, require_category=require_category):
        if entry.product is not None:
            products.append(entry.product)
        elif entry.repeat:
            repeats.append(RecordProblem(entry.line, entry.problem or ""))
        else:
            problems.append(RecordProblem(entry.line, entry.problem or ""))
    file = str(Path(path))
    if problems and strict:
        raise CatalogError(file, problems)
    if repeats:
        logger.info("%s: skipped %d exact repeat record(s)", file, len(repeats))
    return Catalog(path=file, products=products, problems=problems, repeats=repeats)


@dataclass(frozen=True)
class CatalogLine:
    """One record of a catalog file as `iter_catalog` reads it: a product, or what is wrong with it."""

    line: int  # 1-based; for CSV the line the record starts on
    product: Product | None = None
    problem: str | None = None
    repeat: bool = False  # an exact repeat of an earlier record: skipped, not a problem


def iter_catalog(path: str | os.PathLike[str], *, require_category: bool = True) -> Iterator[CatalogLine]:
    """The records of a catalog file, one at a time, with the rules of `load_catalog`: memory holds one
    record and, per id seen, its line and a digest (to tell an exact repeat from a conflicting
    duplicate), so a catalog of millions of items streams (`hitl score`).

    Raises FileNotFoundError, ValueError (format) and CatalogError (not UTF-8, a CSV without the
    required columns) as `load_catalog` does, when the iteration reaches them."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in JSONL_SUFFIXES | CSV_SUFFIXES:
        supported = ", ".join(sorted(JSONL_SUFFIXES | CSV_SUFFIXES))
        raise ValueError(
            f"{file}: unsupported catalog format {suffix or '(no suffix)'!r}; use one of {supported}"
        )
    if not file.exists():
        raise FileNotFoundError(f"catalog file not found: {file}")
    if not file.is_file():
        raise ValueError(f"{file}: not a regular file")
    jsonl = suffix in JSONL_SUFFIXES
    # CSV keeps the old universal newlines (a spreadsheet's "CSV (Macintosh)" ends lines with a bare CR);
    # JSON Lines splits at "\n" only.
    lines = _decoded_lines(file, bare_cr_ends_lines=not jsonl)
    records = _jsonl_records(lines) if jsonl else _csv_records(lines, str(file))
    # Per id: its line and a 64-bit digest of its record, packed in one int (~0.15 KB per id in all).
    first_seen: dict[str, int] = {}
    for line, record in records:
        if isinstance(record, str):  # the reader already knows what is wrong
            yield CatalogLine(line, problem=record)
            continue
        try:
            product = Product.model_validate(record)
        except ValidationError as exc:
            yield CatalogLine(line, problem=describe_invalid(exc))
            continue
        digest = int.from_bytes(hashlib.blake2b(product.model_dump_json().encode(), digest_size=8).digest())
        if product.id in first_seen:
            first_line, first = first_seen[product.id] >> 64, first_seen[product.id] & _DIGEST_MASK
            if digest == first:
                yield CatalogLine(
                    line, problem=f"exact repeat of line {first_line} (id {product.id!r})", repeat=True
                )
            else:
                yield CatalogLine(line, problem=f"duplicate id {product.id!r} (first at line {first_line})")
            continue
        first_seen[product.id] = (line << 64) | digest
        if require_category and product.category is None:
            yield CatalogLine(line, problem=f"no category (id {product.id!r} is unlabeled)")
            continue
        yield CatalogLine(line, product=product)


_DIGEST_MASK = (1 << 64) - 1
_BARE_CR = re.compile(rb"(?<=\r)(?!\n)")  # the place after a CR that no LF follows


def _decoded_lines(file: Path, *, bare_cr_ends_lines: bool = False) -> Iterator[str]:
    """The file's lines, ends kept, split at "\n" (JSON text may hold a raw U+2028 or U+0085 in a
    string, which str.splitlines() would take for line breaks) and, with `bare_cr_ends_lines`, at a
    CR alone; each decoded on its own, so that a byte that is not UTF-8 is reported on its line
    (counted in "\n", as an editor shows it)."""
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):  # spreadsheet exports often start with one
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = RecordProblem(number, f"not valid UTF-8 ({exc.reason})")
                raise CatalogError(str(file), [problem]) from exc
            if bare_cr_ends_lines and "\r" in text:
                yield from (piece.decode("utf-8") for piece in _BARE_CR.split(raw) if piece)
            else:
                yield text


# A reader yields (line, record) where record is a dict for Product, or a string: the reason it is bad.
_Record = tuple[int, dict[str, Any] | str]


def _jsonl_records(lines: Iterable[str]) -> Iterator[_Record]:
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue  # blank lines (a trailing newline, a separator) are not records
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = " (a JSON array file? expected one object per line)" if text.strip() == "[" else ""
            yield line, f"invalid JSON: {exc.msg} at column {exc.colno}{hint}"
            continue
        except RecursionError:
            yield line, "invalid JSON: nested too deeply"
            continue
        except ValueError as exc:  # an integer longer than Python converts (4,300 digits)
            yield line, f"invalid JSON: {exc}"
            continue
        if not isinstance(record, dict):
            yield line, f"record is a JSON {type(record).__name__}, not an object"
            continue
        yield line, record


def _csv_records(lines: Iterable[str], path: str) -> Iterator[_Record]:
    # Lines keep their ends (newline="" semantics): quoted cells may contain newlines, so line numbers
    # come from the reader.
    reader = csv.reader(lines)
    first = next(_csv_rows(reader, path), None)
    if first is None:
        return
    header = [name.strip().lower() for name in first]
    missing = [name for name in CSV_REQUIRED_COLUMNS if name not in header]
    if missing:
        raise CatalogError(path, [RecordProblem(1, f"CSV header lacks column(s): {', '.join(missing)}")])
    line = reader.line_num + 1
    for row in _csv_rows(reader, path):
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            yield start, f"{len(row)} fields, but the header has {len(header)}"
            continue
        cells = dict(zip(header, row, strict=False))  # short rows: the absent trailing cells are empty
        yield start, _csv_record(cells)


def _csv_rows(reader: Any, path: str) -> Iterator[list[str]]:
    """`reader`'s rows; what the csv module cannot parse (a cell over its size limit) is a
    CatalogError on its line, not a crash."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CatalogError(path, [RecordProblem(reader.line_num, f"CSV: {exc}")]) from exc
        yield row


def _csv_record(cells: dict[str, str]) -> dict[str, Any] | str:
    record: dict[str, Any] = {name: cells.get(name, "") for name in ("id", "title", "description")}
    brand = cells.get("brand", "").strip()
    record["brand"] = brand or None

    price = cells.get("price", "").strip()
    if not price:
        record["price"] = None
    else:
        try:
            record["price"] = float(price)
        except ValueError:
            return f"price: {_quoted(price)} is not a number"

    category = cells.get("category", "").strip()
    if not category:
        record["category"] = None
    elif category.startswith("["):
        try:
            record["category"] = json.loads(category)
        except json.JSONDecodeError as exc:
            return f"category: invalid JSON list ({exc.msg})"
        except (ValueError, RecursionError):  # a number of thousands of digits, nesting beyond any list
            return "category: not a JSON list of names (too deeply nested, or a number too long)"
    else:
        record["category"] = [level.strip() for level in category.split(LABEL_SEPARATOR.strip())]
    return record


def describe_invalid(exc: ValidationError) -> str:
    """One line per field: 'price: price must be finite, got nan'."""
    reasons = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "record"
        message = str(error["msg"]).removeprefix("Value error, ")
        reasons.append(f"{where}: {message[0].lower()}{message[1:]}" if message else where)
    return "; ".join(reasons)


def write_catalog(products: Iterable[Product], path: str | os.PathLike[str]) -> Path:
    """Write `products` as JSON Lines that `load_catalog` reads back unchanged; returns the path.

    Written to a temporary file and renamed, so a reader never sees half a catalog.
    """
    file = Path(path)
    if file.suffix.lower() not in JSONL_SUFFIXES:
        raise ValueError(f"{file}: catalogs are written as JSON Lines; use a .jsonl suffix")
    file.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(file) as partial, partial.open("w", encoding="utf-8", newline="\n") as out:
        for product in products:
            out.write(json.dumps(product.model_dump(mode="json"), ensure_ascii=False))
            out.write("\n")
    return file


# --------------------------------------------------------------------------------------------------------
# Datasets and splits


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no single truth value
class LabeledDataset:
    """Parallel per-item arrays for training and evaluation; row i of every array is the same item.

    Attributes
    ----------
    ids, texts, labels, groups : (n,) object arrays of str. `texts` is `Product.text`, `groups` the
        normalized title (the unit of `group_split`).
    brands : (n,) object array of str or None.
    prices : (n,) float64, nan where the price is unknown.
    classes : sorted label vocabulary. A subset keeps its parent's vocabulary, so `y` indices agree
        between train, calibration and test even when a part lacks some class.
    dropped_classes : label -> item count of the classes `build_dataset` removed as too small.
    n_unlabeled : unlabeled products `build_dataset` skipped.
    """

    ids: NDArray[np.object_]
    texts: NDArray[np.object_]
    labels: NDArray[np.object_]
    prices: NDArray[np.float64]
    brands: NDArray[np.object_]
    groups: NDArray[np.object_]
    classes: tuple[str, ...] = ()
    dropped_classes: dict[str, int] = field(default_factory=dict)
    n_unlabeled: int = 0

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("texts", "labels", "prices", "brands", "groups"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, ids has {n}")
        present = sorted({str(label) for label in self.labels})
        if not self.classes:
            object.__setattr__(self, "classes", tuple(present))
        elif list(self.classes) != sorted(set(self.classes)):
            raise ValueError("classes must be sorted and unique")
        elif not set(present) <= set(self.classes):
            unknown = sorted(set(present) - set(self.classes))
            raise ValueError(f"labels not in classes: {unknown[:5]}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def y(self) -> NDArray[np.int64]:
        """(n,) index of each label in `classes`."""
        return np.searchsorted(np.array(self.classes, dtype=object), self.labels).astype(np.int64)

    def subset(self, indices: Sequence[int] | NDArray[np.integer[Any]]) -> LabeledDataset:
        """The rows at `indices` (in that order), sharing this dataset's `classes`."""
        index = np.asarray(indices, dtype=np.int64)
        return LabeledDataset(
            ids=self.ids[index],
            texts=self.texts[index],
            labels=self.labels[index],
            prices=self.prices[index],
            brands=self.brands[index],
            groups=self.groups[index],
            classes=self.classes,
            dropped_classes=dict(self.dropped_classes),
            n_unlabeled=self.n_unlabeled,
        )


def _object_array(values: Sequence[Any]) -> NDArray[np.object_]:
    # Built element-wise: np.array(list_of_str, dtype=object) is fine, but a list of equal-length lists
    # would become 2-D; an explicit 1-D buffer can't.
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def build_dataset(products: Iterable[Product], *, level: int, min_class_size: int) -> LabeledDataset:
    """Labelled items at taxonomy depth `level`, keeping classes with at least `min_class_size` items.

    Unlabeled products are skipped (counted in `n_unlabeled`); removed classes are listed in
    `dropped_classes` and logged. Raises ValueError when no class is large enough.
    """
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    if min_class_size < 1:
        raise ValueError(f"min_class_size must be >= 1, got {min_class_size}")
    labeled: list[tuple[Product, str]] = []
    n_unlabeled = 0
    for product in products:
        if product.category is None:
            n_unlabeled += 1
        else:
            labeled.append((product, label_of(product, level)))

    sizes = Counter(label for _, label in labeled)
    dropped = {label: n for label, n in sorted(sizes.items()) if n < min_class_size}
    kept = [(p, label) for p, label in labeled if label not in dropped]
    if not kept:
        raise ValueError(
            f"no class has >= {min_class_size} items at level {level} "
            f"({len(labeled)} labelled items, {len(sizes)} classes, largest {max(sizes.values(), default=0)})"
        )
    if dropped:
        logger.info(
            "build_dataset: dropped %d class(es) with < %d items (%d items); kept %d classes, %d items",
            len(dropped),
            min_class_size,
            sum(dropped.values()),
            len(sizes) - len(dropped),
            len(kept),
        )
    return LabeledDataset(
        ids=_object_array([p.id for p, _ in kept]),
        texts=_object_array([p.text for p, _ in kept]),
        labels=_object_array([label for _, label in kept]),
        prices=np.array([np.nan if p.price is None else p.price for p, _ in kept], dtype=np.float64),
        brands=_object_array([p.brand for p, _ in kept]),
        # A title of emoji or punctuation only has no key: its own group, not one with every such title
        # (no title key holds a colon).
        groups=_object_array([normalize_title(p.title) or f"id:{p.id}" for p, _ in kept]),
        dropped_classes=dropped,
        n_unlabeled=n_unlabeled,
    )


@dataclass(frozen=True, eq=False)
class DatasetSplit:
    """Disjoint, sorted (n_part,) int64 row indices into the dataset that was split."""

    train: NDArray[np.int64]
    calibration: NDArray[np.int64]
    test: NDArray[np.int64]

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "calibration": len(self.calibration), "test": len(self.test)}


def group_split(
    dataset: LabeledDataset, *, calibration_fraction: float, test_fraction: float, seed: int
) -> DatasetSplit:
    """Split rows into train / calibration / test with no title group in two parts.

    Every group (normalized title) goes to one part whole, so pack-size repeats cannot leak from train
    into test. Stratified approximately: groups are dealt class by class (a group counts for its most
    common label) in a seeded shuffled order, each to the part furthest below its target share of that
    class. The first group of every class goes to train; a class with at least one group per part then
    gets one in calibration and one in test, so small classes are present everywhere they can be. The
    same dataset and seed give the same split.

    Parameters
    ----------
    dataset : rows to split; uses `labels` and `groups`.
    calibration_fraction, test_fraction : target shares in [0, 1) with sum < 1; train gets the rest.
    seed : seed of the group shuffle.

    Returns
    -------
    DatasetSplit : indices covering every row exactly once.
    """
    fractions = {"calibration": calibration_fraction, "test": test_fraction}
    for name, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}_fraction must be in [0, 1), got {value}")
    if calibration_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"calibration_fraction + test_fraction must be < 1 (train needs rows), "
            f"got {calibration_fraction} + {test_fraction}"
        )
    targets = np.array([1.0 - calibration_fraction - test_fraction, calibration_fraction, test_fraction])

    labels = [str(label) for label in dataset.labels]
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, group in enumerate(dataset.groups):
        rows_of[str(group)].append(row)
    groups_of_class: dict[str, list[str]] = defaultdict(list)
    for group in sorted(rows_of):
        rows = rows_of[group]
        if len(rows) == 1:
            label = labels[rows[0]]
        else:
            counts = Counter(labels[row] for row in rows)
            # Most common label; ties broken by name so the result does not depend on row order.
            label = min(counts, key=lambda lab: (-counts[lab], lab))
        groups_of_class[label].append(group)

    rng = np.random.default_rng(seed)
    part_of_row = [0] * len(dataset)
    active = [part for part in range(3) if targets[part] > 0]
    for label in sorted(groups_of_class):
        groups = groups_of_class[label]
        total = sum(len(rows_of[g]) for g in groups)
        want = [float(t) * total for t in targets]
        filled = [0, 0, 0]
        for position, g in enumerate(rng.permutation(len(groups)).tolist()):
            rows = rows_of[groups[g]]
            if position == 0:
                part = 0  # a class the model never saw in training cannot be predicted at all
            elif position < len(active) and len(groups) >= len(active):
                part = active[position]
            else:
                # The part furthest below its target; ties go to the earlier part (train first).
                part = max(active, key=lambda k: (want[k] - filled[k], -k))
            filled[part] += len(rows)
            for row in rows:
                part_of_row[row] = part

    assignment = np.asarray(part_of_row, dtype=np.int64)
    train, calibration, test = (np.flatnonzero(assignment == part).astype(np.int64) for part in range(3))
    return DatasetSplit(train=train, calibration=calibration, test=test)
