"""Mask personal data in free text before it is embedded, hashed or stored, and credentials in error
text before it is logged, stored or shown (`mask_credentials`, `describe_error`).

Catalog titles are full of numbers ("500 mg", "Pack of 12", "2 x 500 g", "SKU 12345", "2019 2020"),
so the number rules are deliberately structural: a digit run is only a phone number when it looks like
one (international "+", an area code in brackets, a trunk "0" prefix, or the North-American 3-3-4
shape) and only a card number when it is 13-19 digits, formatted like a card and Luhn-valid. Bare
digit runs without separators are never phone numbers: they are SKUs, EANs and order numbers.

Masking is idempotent: ``mask_pii(mask_pii(t)) == mask_pii(t)``.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

EMAIL_TOKEN = "[EMAIL]"
PHONE_TOKEN = "[PHONE]"
CARD_TOKEN = "[CARD]"
SECRET_TOKEN = "[SECRET]"
# A log line keeps at most this much of an error message; stored errors pass their column's size.
ERROR_TEXT_CHARS = 1000

_EMAIL = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])"  # start of the local part, not the middle of one
    r"[\w.!#$%&'*+/=?^`{|}~-]+"  # local part: RFC 5322 atom characters
    r"@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*"  # domain labels
    r"\.[^\W\d_]{2,}(?!\w)"  # alphabetic top-level domain
)

# A maximal run of digit groups joined by single space/dash separators, with a leading "+" when there
# is one (so "+1 ..." is seen as a country code); cards are searched inside it.
_CARD_RUN = re.compile(r"(?<![\w+])(?<!\d[.,])\+?\d+(?:[ -]\d+)*(?!\w)")
# Product codes that legitimately carry 13-19 digits; a number right after them is not a card.
_CODE_LABEL = re.compile(r"(?:\b(?:ean|gtin|upc|isbn|asin|imei)(?:-?1[03])?)[\s:#.-]*$", re.IGNORECASE)

# A maximal run of digit groups that could hold a phone number: "+", "(415)", "(0)", and single
# space/dot/dash separators between groups.
_PHONE_RUN = re.compile(
    r"""
    (?<![\w+])(?<!\d[.,])      # not inside a word, a number or a decimal
    (?:\+\s?)?
    (?:\(\d{1,5}\)\s?)?
    \d+
    (?:(?:[ .\-]|\s?\(\d{1,5}\)\s?)\d+)*
    (?!\w)
    """,
    re.VERBOSE,
)
_DIGIT_GROUP = re.compile(r"\d+")
_ANY_DIGIT = re.compile(r"\d")

_MIN_PHONE_DIGITS, _MAX_PHONE_DIGITS = 9, 15
_MIN_CARD_DIGITS, _MAX_CARD_DIGITS = 13, 19


@dataclass(frozen=True)
class _Group:
    start: int
    end: int
    digits: str


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ascii_digits(text: str) -> str:
    """Any script's decimal digits ("٤١١١", "４１５") as ASCII ones: the checks below read ASCII."""
    return text if text.isascii() else "".join(str(unicodedata.digit(ch)) for ch in text)


def _groups(run: str) -> list[_Group]:
    return [_Group(m.start(), m.end(), _ascii_digits(m.group())) for m in _DIGIT_GROUP.finditer(run)]


def _is_card(window: list[_Group], run: str) -> bool:
    digits = "".join(g.digits for g in window)
    if not _MIN_CARD_DIGITS <= len(digits) <= _MAX_CARD_DIGITS or not _luhn_valid(digits):
        return False
    if run.startswith("+") and window[0].start > 1:
        # "+1 9923-5942-2314-51": the digits after a country code are a phone number, even when
        # they happen to pass the Luhn check; the phone pass masks the whole number.
        return False
    if len(window) == 1:
        return True
    # Printed card numbers open with a 4-digit group (4-4-4-4, 4-6-5 Amex, 4-6-4 Diners) and keep one
    # separator style; ISBNs ("978-3-16-148410-0") and dates do not fit this shape.
    separators = {run[a.end : b.start] for a, b in itertools.pairwise(window)}
    sizes = [len(g.digits) for g in window]
    return (
        len(separators) == 1
        and sizes[0] == 4
        and all(4 <= s <= 6 for s in sizes[1:-1])
        and 1 <= sizes[-1] <= 6
    )


def _nanp_shape(sizes: list[int], digits: list[str]) -> bool:
    """North-American 3-3-4 (optionally led by a "1"), area code and exchange starting with 2-9."""
    if sizes[:1] == [1] and digits[0] == "1":
        sizes, digits = sizes[1:], digits[1:]
    return sizes == [3, 3, 4] and digits[0][0] in "23456789" and digits[1][0] in "23456789"


def _is_phone(window: list[_Group], run: str) -> bool:
    digits = "".join(g.digits for g in window)
    if not _MIN_PHONE_DIGITS <= len(digits) <= _MAX_PHONE_DIGITS:
        return False
    before = run[: window[0].start].rstrip()
    if before.endswith("+") or before.endswith("+("):
        return True
    if len(window) == 1:
        # A bare digit run with no "+" is an SKU, EAN or order number.
        return False
    separators = "".join(run[a.end : b.start] for a, b in itertools.pairwise(window))
    if "." in separators and " " in separators:
        # "0.125 0.250 0.500": a list of decimals, not a phone number.
        return False
    sizes = [len(g.digits) for g in window]
    group_digits = [g.digits for g in window]
    if before.endswith("("):
        return True
    if group_digits[0].startswith("0"):
        # Trunk-prefixed local numbers ("030 1234567", "06 12 34 56 78", "020 7946 0958").
        return all(s >= 2 for s in sizes)
    return _nanp_shape(sizes, group_digits)


def _longest_window(
    groups: list[_Group],
    i: int,
    run: str,
    accept: Callable[[list[_Group], str], bool],
    min_digits: int,
    max_digits: int,
) -> int | None:
    """End index of the longest accepted window starting at group `i`, or None."""
    stop, n_digits = i, 0
    while stop < len(groups) and n_digits + len(groups[stop].digits) <= max_digits:
        n_digits += len(groups[stop].digits)
        stop += 1
    for j in range(stop, i, -1):
        if n_digits < min_digits:
            return None
        if accept(groups[i:j], run):
            return j
        n_digits -= len(groups[j - 1].digits)
    return None


def _mask_runs(
    text: str,
    pattern: re.Pattern[str],
    accept: Callable[[list[_Group], str], bool],
    token: str,
    min_digits: int,
    max_digits: int,
    skip_after: re.Pattern[str] | None = None,
) -> str:
    """Replace the earliest-starting, longest window of digit groups in each run that `accept`s.

    Only windows of `min_digits`..`max_digits` digits are tried, so a long table of numbers costs
    O(groups), not O(groups^3).
    """
    pieces: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        run = match.group()
        if sum(ch.isdigit() for ch in run) < min_digits:
            continue  # most catalog numbers ("500 g", "Pack of 12") end here
        if skip_after is not None and skip_after.search(text, max(0, match.start() - 16), match.start()):
            continue
        groups = _groups(run)
        i = 0
        while i < len(groups):
            j = _longest_window(groups, i, run, accept, min_digits, max_digits)
            if j is None:
                i += 1
                continue
            start = match.start() + groups[i].start
            # Pull a leading "+", "(", "+(" or "+ " into the masked span.
            while start > match.start() and text[start - 1] in "+(":
                start -= 1
            if start - 2 >= match.start() and text[start - 2 : start] == "+ ":
                start -= 2
            pieces.append(text[last:start])
            pieces.append(token)
            last = match.start() + groups[j - 1].end
            i = j
    pieces.append(text[last:])
    return "".join(pieces)


def mask_pii(text: str) -> str:
    """Replace e-mail addresses, phone numbers and payment card numbers with placeholder tokens.

    Parameters
    ----------
    text : str
        Free text (a product title or description).

    Returns
    -------
    str
        `text` with ``[EMAIL]``, ``[PHONE]`` and ``[CARD]`` in place of the personal data; everything
        else is left byte-for-byte unchanged.
    """
    if not text:
        return text
    # Fast path (most titles, and text masked already): no "@" means no email, and fewer digits than
    # the shortest phone number means no phone and no card. ~1 us instead of ~20 us per title.
    if "@" not in text and len(_ANY_DIGIT.findall(text)) < _MIN_PHONE_DIGITS:
        return text
    masked = _EMAIL.sub(EMAIL_TOKEN, text)
    if not any(ch.isdigit() for ch in masked):
        return masked
    # Cards before phones: a 16-digit card grouped 4-4-4-4 must not be half-eaten as a phone number.
    masked = _mask_runs(
        masked, _CARD_RUN, _is_card, CARD_TOKEN, _MIN_CARD_DIGITS, _MAX_CARD_DIGITS, skip_after=_CODE_LABEL
    )
    return _mask_runs(masked, _PHONE_RUN, _is_phone, PHONE_TOKEN, _MIN_PHONE_DIGITS, _MAX_PHONE_DIGITS)


# The user-info part of a URL (``scheme://user:password@host``, ``https://TOKEN@host``): database and
# tracking URLs carry credentials there, and client libraries quote the URL in their error messages.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s/@?#]+@")
# Credentials passed as query parameters or key=value / key: value pairs in a message.
_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:[a-z_]*(?:password|passwd|secret|token|api[_-]?key)[a-z_]*|access_key|auth)"
    r"[\"']?\s*[=:]\s*[\"']?)(?P<value>[^\s&,;\"'}]+)",
    re.IGNORECASE,
)
# An HTTP Authorization value quoted back ("Token abc", "Bearer abc", "Basic abc").
_AUTH_VALUE = re.compile(r"\b(?P<kind>Token|Bearer|Basic)\s+(?P<value>[A-Za-z0-9._~+/=\-]{8,})")


def mask_credentials(text: str) -> str:
    """Replace credentials in `text` with ``[SECRET]``: the user-info of URLs, the values of
    password/secret/token/api_key parameters, and Authorization values (``Bearer ...``).

    Error messages of database drivers and HTTP clients quote the URL they failed on, and a URL may
    carry its credentials; this runs before such a message is logged, stored or returned.

    Returns
    -------
    str
        `text` with every credential found replaced; the rest unchanged.
    """
    if not text:
        return text
    masked = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{SECRET_TOKEN}@", text)
    masked = _SECRET_PAIR.sub(
        lambda m: m.group(0) if m.group("value") == SECRET_TOKEN else f"{m.group('key')}{SECRET_TOKEN}",
        masked,
    )
    return _AUTH_VALUE.sub(lambda m: f"{m.group('kind')} {SECRET_TOKEN}", masked)


def describe_error(exc: BaseException, limit: int = ERROR_TEXT_CHARS) -> str:
    """``"TypeName: message"`` for a log line, a stored error or an API answer: credentials and
    personal data masked (`mask_credentials`, `mask_pii`), cut to `limit` characters.

    The one way an exception becomes text outside the process: a failing MLflow or database call
    quotes its URL, and a validation error may quote the item that failed.
    """
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return mask_pii(mask_credentials(text))[:limit]
