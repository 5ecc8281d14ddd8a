from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.pii import describe_error, mask_credentials, mask_pii


def _luhn_complete(prefix: str) -> str:
    """Append the check digit that makes `prefix` Luhn-valid."""
    for check in "0123456789":
        digits = prefix + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Contact john.doe@example.com today", "Contact [EMAIL] today"),
        ("mail: Jane_O'Neil+shop@mail.co.uk.", "mail: [EMAIL]."),
        ("Questions? SUPPORT@Shop-Example.DE", "Questions? [EMAIL]"),
        ("müller@bücher.de bestellt", "[EMAIL] bestellt"),
        ("a@b.com,c@d.org", "[EMAIL],[EMAIL]"),
    ],
)
def test_emails_are_masked(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call +1 415 555 2671 now", "Call [PHONE] now"),
        ("+44 20 7946 0958", "[PHONE]"),
        ("+44 (0)20 7946 0958", "[PHONE]"),
        ("+33612345678", "[PHONE]"),
        ("+49 (30) 1234567", "[PHONE]"),
        ("+1 (415) 555-2671", "[PHONE]"),
        ("+91 98765 43210", "[PHONE]"),
        ("+ 44 20 7946 0958", "[PHONE]"),
        ("Tel.+44 20 7946 0958", "Tel.[PHONE]"),
        ("(415) 555-2671", "[PHONE]"),
        ("415-555-2671", "[PHONE]"),
        ("415.555.2671", "[PHONE]"),
        ("1-800-555-0199", "[PHONE]"),
        ("030 12345678", "[PHONE]"),
        ("0171-1234567", "[PHONE]"),
        ("06 12 34 56 78", "[PHONE]"),
        ("020 7946 0958", "[PHONE]"),
        ("07700 900123", "[PHONE]"),
        ("tel: 0049 30 1234 5678", "tel: [PHONE]"),
        ("Pack of 12 0171 1234567", "Pack of 12 [PHONE]"),
        ("Seller: Anna, 06 12 34 56 78, a@b.fr", "Seller: Anna, [PHONE], [EMAIL]"),
    ],
)
def test_phone_numbers_are_masked(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111 1111 1111 1111", "[CARD]"),
        ("4111-1111-1111-1111", "[CARD]"),
        ("paid with 4111111111111111.", "paid with [CARD]."),
        ("Amex 3782 822463 10005", "Amex [CARD]"),
        ("5555 5555 5555 4444", "[CARD]"),
        ("6011 1111 1111 1117 exp 12/25", "[CARD] exp 12/25"),
        ("Qty 12 4111 1111 1111 1111", "Qty 12 [CARD]"),
        # A bare Luhn-valid 13-digit run is indistinguishable from a card: masking wins.
        ("4006381333932", "[CARD]"),
    ],
)
def test_card_numbers_are_masked(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Vitamin C 500 mg, 100 tablets",
        "Pack of 12",
        "Stainless steel wire 1.0 mm",
        "Coffee beans 2 x 500 g",
        "SKU 12345",
        "Order 123456789",
        "Art. 0012345678",
        "Released 2019 2020 2021",
        "Fits 2015-2019 models",
        "Best before 2024-01-15",
        "01.01.2024",
        "No.2 pencil HB",
        "Now $1,299.99",
        "€ 49,95 inkl. MwSt.",
        "1 299,00 €",
        "Sizes 36 38 40 42 44",
        "Set of 3 100 200 300 ml",
        "Bundle 100 200 3000",
        "0.125 0.250 0.500 in drill bits",
        "M8 x 1.25 x 40 mm hex bolts",
        "120 x 200 cm fitted sheet",
        "Samsung SM-G991B 128GB",
        "10000 mAh power bank",
        "USB 3.0 1TB",
        "HDMI 2.1 8K 60Hz 4K 120Hz",
        "AA batteries 24 pack 1.5 V",
        "99.9% pure",
        "Lot of 100 000 pcs",
        "1/4 inch 3/8 inch",
        "Size 10.5 US 44 EU",
        "v2.0123 456 789",
        "ISBN 978-3-16-148410-0",
        "ISBN-13: 9783161484100",
        "EAN 4006381333932",  # Luhn-valid, but labelled as a barcode
        "GTIN: 4006381333932",
        "Card game for 2-6 players, ages 8+",
        "Follow @brand for deals",
        "Dell OptiPlex 7090 i7 16GB 512GB SSD",
        "4111 1111 1111 1112",  # fails the Luhn check
    ],
)
def test_ordinary_catalog_text_is_untouched(text: str) -> None:
    assert mask_pii(text) == text


def test_empty_and_digit_free_text() -> None:
    assert mask_pii("") == ""
    assert mask_pii("Organic green tea") == "Organic green tea"


_WORDS = st.sampled_from(
    ["tea", "Pack", "of", "mg", "ml", "x", "cm", "Size", "pcs", "GB", "USB", "LED", "kg", "Set", "V", "W"]
)
_SMALL_NUMBER = st.integers(min_value=1, max_value=9999).map(str)
_DECIMAL = st.tuples(st.integers(1, 999), st.integers(0, 99)).map(lambda t: f"{t[0]}.{t[1]}")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(_SMALL_NUMBER, _DECIMAL), _WORDS), min_size=1, max_size=8))
def test_number_unit_phrases_are_never_masked(parts: list[tuple[str, str]]) -> None:
    text = " ".join(f"{number} {unit}" for number, unit in parts)
    assert mask_pii(text) == text


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["4", "51", "52", "53", "54", "55", "6011", "2221"]),
    st.text(alphabet="0123456789", min_size=15, max_size=15),
    st.sampled_from([" ", "-", ""]),
    st.sampled_from(["paid ", "card: ", ""]),
)
def test_any_luhn_valid_16_digit_card_is_masked(prefix: str, body: str, sep: str, lead: str) -> None:
    digits = _luhn_complete((prefix + body)[:15])
    formatted = sep.join(digits[i : i + 4] for i in range(0, 16, 4))
    assert mask_pii(f"{lead}{formatted} thanks") == f"{lead}[CARD] thanks"


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["+1", "+44", "+49", "+33", "+81"]),
    st.lists(st.text(alphabet="0123456789", min_size=2, max_size=4), min_size=3, max_size=4),
    st.sampled_from([" ", "-", "."]),
)
def test_international_numbers_are_masked(country: str, groups: list[str], sep: str) -> None:
    number = country + " " + sep.join(groups)
    digits = sum(ch.isdigit() for ch in number)
    text = f"ring {number} today"
    if 9 <= digits <= 15:
        assert mask_pii(text) == "ring [PHONE] today"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 +-.()@abc", max_size=40))
def test_masking_is_idempotent(text: str) -> None:
    once = mask_pii(text)
    assert mask_pii(once) == once


def test_long_tables_of_numbers_stay_fast() -> None:
    text = " ".join(str(i % 97) for i in range(5_000))
    assert mask_pii(text) == text


def test_a_luhn_valid_number_after_a_country_code_is_a_phone_not_a_card() -> None:
    # Found by test_international_numbers_are_masked: the 14 digits after "+1" pass the Luhn check.
    assert mask_pii("ring +1 9923-5942-2314-51 today") == "ring [PHONE] today"
    assert mask_pii("card +4111 1111 1111 1111 ok") == "card [CARD] ok"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "API request to https://jane:s3cret@mlflow.corp/api/2.0/x failed",
            "API request to https://[SECRET]@mlflow.corp/api/2.0/x failed",
        ),
        (
            "could not connect: postgresql+psycopg://u:pw@db:5432/hitl",
            "could not connect: postgresql+psycopg://[SECRET]@db:5432/hitl",
        ),
        ("GET https://ghp_token123@git.corp/repo", "GET https://[SECRET]@git.corp/repo"),
        ("dsn: host=db password=hunter2 user=u", "dsn: host=db password=[SECRET] user=u"),
        ("/api/x?api_key=abc123&page=2", "/api/x?api_key=[SECRET]&page=2"),
        ('{"access_token": "abc.def", "n": 1}', '{"access_token": "[SECRET]", "n": 1}'),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x", "Authorization: Bearer [SECRET]"),
        ("header Token 0123456789abcdef sent", "header Token [SECRET] sent"),
    ],
)
def test_credentials_in_error_text_are_masked(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked
    assert mask_credentials(masked) == masked  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "connection refused: http://127.0.0.1:5000/api/2.0/mlflow/runs/create",
        "HTTP 404 on /api/projects/3/",
        "tokenizer failed on 12 titles",
        "Garlic Oil - Vegetarian Capsule 500 mg",
        "",
    ],
)
def test_text_without_credentials_is_left_alone(text: str) -> None:
    assert mask_credentials(text) == text


def test_describe_error_names_the_type_and_masks_secrets_and_personal_data() -> None:
    exc = RuntimeError("upload to https://u:pw@store.corp/b failed for jane.doe@corp.com")
    assert describe_error(exc) == "RuntimeError: upload to https://[SECRET]@store.corp/b failed for [EMAIL]"
    assert describe_error(KeyError()) == "KeyError"
    assert len(describe_error(ValueError("x" * 5000), 300)) == 300


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card ٤١١١١١١١١١١١١١١١", "card [CARD]"),  # Arabic-Indic digits
        ("card ４１１１ １１１１ １１１１ １１１１", "card [CARD]"),  # full-width
        ("tel ４１５-５５５-２６７１", "tel [PHONE]"),
        ("call +४४ २० ७९४६ ०९५८", "call [PHONE]"),  # Devanagari
        ("SKU ١٢٣٤٥٦٧٨٩٠١", "SKU ١٢٣٤٥٦٧٨٩٠١"),  # a bare run stays a code, as in ASCII
    ],
)
def test_numbers_in_any_script_are_masked_as_their_ascii_forms_are(text: str, expected: str) -> None:
    assert mask_pii(text) == expected
