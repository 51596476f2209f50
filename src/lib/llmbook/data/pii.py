"""Personal information: detect, validate and mask; plus a small synthetic benchmark builder.

Detectors are regular expressions for *candidates* followed by *validators* - the part that
makes precision high: IP addresses must parse with :mod:`ipaddress`, payment cards must pass
the Luhn check (ISO/IEC 7812) with an issued brand prefix and a length that brand uses, Chinese
resident IDs (GB 11643-1999) must have a valid region digit, birth date and ISO 7064 MOD 11-2
check character, phone numbers must have the digit count of their country's numbering plan
(:data:`COUNTRY_NSN` for ``+CC`` numbers, :data:`PHONE_FORMATS` for national formats).

Boundaries are ASCII-only (``[0-9A-Za-z]``), never ``\\w``: ``\\w`` matches CJK characters, and
Chinese text writes ``请联系li.wei@163.com`` or ``电话+86 138 0013 8000`` with no space.
Overlapping candidates are resolved by a fixed type priority (:data:`PRIORITY`; an e-mail
address swallows the phone-like digits inside it), then by length (longest wins).

Types and their default placeholders (``mask_pii``): ``EMAIL`` (``<EMAIL>``), ``ID_CN``, ``CARD``,
``IPV6``, ``IPV4``, ``PHONE``; :data:`CS336_PLACEHOLDERS` is the Stanford CS336 style
(``|||EMAIL_ADDRESS|||``, ``|||PHONE_NUMBER|||``, ``|||IP_ADDRESS|||``).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from llmbook.data.pipeline import Doc, Stage

PII_TYPES = ("EMAIL", "ID_CN", "CARD", "IPV6", "IPV4", "PHONE")
PRIORITY = {t: i for i, t in enumerate(PII_TYPES)}  # earlier wins on overlap
DEFAULT_PLACEHOLDERS = {t: f"<{t}>" for t in PII_TYPES}  # what mask_pii writes unless told otherwise
CS336_PLACEHOLDERS = {  # the style of Stanford CS336's data assignment (IPv4 and IPv6 share one tag)
    "EMAIL": "|||EMAIL_ADDRESS|||", "PHONE": "|||PHONE_NUMBER|||", "IPV4": "|||IP_ADDRESS|||",
    "IPV6": "|||IP_ADDRESS|||", "CARD": "|||CREDIT_CARD_NUMBER|||", "ID_CN": "|||ID_NUMBER|||",
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Span:
    """One detected item: ``text[start:end] == value``."""

    type: str  # one of PII_TYPES
    start: int  # character offset, inclusive
    end: int  # character offset, exclusive
    value: str  # the matched text


# --- validators ----------------------------------------------------------------------------
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# (brand, leading-digit ranges "lo-hi" compared on len(lo) digits, card lengths): the issued IIN ranges
_16_19 = (16, 17, 18, 19)
CARD_BRANDS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("Visa", "4", (13, 16, 19)),
    ("Mastercard", "51-55,2221-2720", (16,)),
    ("American Express", "34,37", (15,)),
    ("Discover", "6011,644-649,65", _16_19),
    ("JCB", "3528-3589", _16_19),
    ("UnionPay", "62", _16_19),
    ("Diners Club", "300-305,3095,36", (14, 15, *_16_19)),
    ("Diners Club", "38-39", _16_19),
    ("Maestro", "5018,5020,5038,5893,6304,6759,6761-6763", (13, 14, 15, *_16_19)),  # 12-digit ones: too short
    ("Mir", "2200-2204", _16_19),
)
_BRANDS = [(b, *(r if "-" in r else f"{r}-{r}").split("-"), ls) for b, rs, ls in CARD_BRANDS for r in rs.split(",")]


def luhn_ok(digits: str) -> bool:
    """Luhn checksum: doubling every second digit from the right, the digit sum is 0 mod 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The brand whose issued prefix range and card length fit ``digits`` (separators removed), else None."""
    for brand, lo, hi, lengths in _BRANDS:
        if len(digits) in lengths and lo <= digits[: len(lo)] <= hi:
            return brand
    return None


def _born_ok(s: str) -> bool:
    """Characters 6..13 of a resident id are a birth date YYYYMMDD from 1900-01-01 to today."""
    try:
        born = _dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= born <= _dt.date.today()


def _id_shaped(s: str) -> bool:
    """A bare 18-digit run with a plausible birth date (a resident id, maybe mistyped): never a card."""
    return len(s) == 18 and s.isdigit() and s[0] in "12345678" and _born_ok(s)


def card_ok(s: str) -> bool:
    """13-19 digits (space/dash separators removed), an issued brand prefix and length, Luhn, not id-shaped."""
    d = re.sub(r"[ -]", "", s)
    return d.isdigit() and card_brand(d) is not None and luhn_ok(d) and not _id_shaped(s)


def cn_id_check_char(first17: str) -> str:
    """GB 11643 check character: ISO 7064 MOD 11-2 over the first 17 digits."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS)) % 11]


def cn_id_ok(s: str) -> bool:
    """18 characters; region code starts with 1-8; birth date YYYYMMDD valid (1900..today); check char matches."""
    ok = len(s) == 18 and s[:17].isdigit() and s[0] in "12345678" and _born_ok(s)
    return ok and cn_id_check_char(s[:17]) == s[17].upper()


# --- phone numbering plans -----------------------------------------------------------------
# Country calling code -> (min, max) digits of the national significant number (ITU-T E.164, no trunk 0).
COUNTRY_NSN: dict[str, tuple[int, int]] = {
    "1": (10, 10), "7": (10, 10), "20": (8, 10), "27": (9, 9), "30": (10, 10), "31": (9, 9), "32": (8, 9),
    "33": (9, 9), "34": (9, 9), "36": (8, 9), "39": (6, 11), "40": (9, 9), "41": (9, 9), "43": (4, 13),
    "44": (9, 10), "45": (8, 8), "46": (7, 13), "47": (8, 8), "48": (9, 9), "49": (6, 13), "51": (8, 9),
    "52": (10, 10), "54": (10, 11), "55": (10, 11), "56": (9, 9), "57": (10, 10), "60": (8, 10), "61": (9, 9),
    "62": (8, 12), "63": (8, 10), "64": (8, 10), "65": (8, 8), "66": (8, 9), "81": (9, 10), "82": (8, 10),
    "84": (9, 10), "86": (9, 11), "90": (10, 10), "91": (10, 10), "92": (9, 10), "94": (9, 9), "98": (10, 10),
    "212": (9, 9), "234": (8, 10), "254": (9, 9), "351": (9, 9), "353": (7, 9), "358": (5, 12), "380": (9, 9),
    "420": (9, 9), "852": (8, 8), "853": (8, 8), "880": (10, 10), "886": (8, 9), "966": (9, 9), "971": (8, 9),
    "972": (8, 9),
}  # fmt: skip
_NSN_RULES = {  # stricter national-number shapes where the plan is regular
    "1": re.compile(r"[2-9]\d\d[2-9]\d{6}"),  # NANP: area code and exchange start with 2-9
    "86": re.compile(r"1[3-9]\d{9}|(?:10|2\d|[3-9]\d\d)\d{7,8}"),  # mobile, or area code + 7-8 digit local
    "91": re.compile(r"[1-9]\d{9}"),
}


@dataclass(frozen=True, kw_only=True)
class PhoneFormat:
    """One national (no country code) phone-number format: a row of :data:`PHONE_FORMATS`."""

    region: str  # where the format is used
    pattern: str  # regex; (?P<s>..) ... (?P=s) forces one separator throughout
    digits: tuple[int, int]  # allowed digit count including the trunk prefix 0 (or NANP's 1)
    example: str  # a number the pattern matches in full


PHONE_FORMATS: tuple[PhoneFormat, ...] = (
    PhoneFormat(region="US/Canada (NANP)", digits=(10, 11), example="(415) 555-0132",
                pattern=r"(?:1[-. ])?(?:\([2-9]\d\d\) ?[2-9]\d\d[-. ]|[2-9]\d\d(?P<s>[-. ])[2-9]\d\d(?P=s))\d{4}"),
    PhoneFormat(region="China mobile", digits=(11, 11), example="138 0013 8000",
                pattern=r"1[3-9]\d(?:\d{8}|(?P<s>[- ])\d{4}(?P=s)\d{4})"),
    PhoneFormat(region="China landline", digits=(10, 12), example="(0755) 8888 6666",
                pattern=r"(?:[(（]0(?:10|2\d|[3-9]\d\d)[)）] ?|0(?:10|2\d|[3-9]\d\d)[- ])\d{3,4}[- ]?\d{4}"),
    PhoneFormat(region="UK", digits=(10, 11), example="020 7946 0958",
                pattern=r"0(?:\d\d(?P<s>[ -])\d{4}(?P=s)\d{4}|\d{3}(?P<t>[ -])\d{3}(?P=t)\d{4}|\d{4}[ -]\d{5,6})"),
    PhoneFormat(region="area code in parentheses (UK, Germany, Japan, ...)", digits=(10, 11), example="(020) 7946 0958",
                pattern=r"\(0\d{1,4}\) ?\d{2,4}[ -]?\d{3,4}"),
    PhoneFormat(region="Germany", digits=(10, 12), example="030 12345678",
                pattern=r"0[1-9]\d{1,3}(?: ?/ ?|[ -])\d{4,8}"),
    PhoneFormat(region="France", digits=(10, 10), example="06.12.34.56.78",
                pattern=r"0[1-9](?P<s>[ .-])\d\d(?:(?P=s)\d\d){3}"),
    PhoneFormat(region="Japan", digits=(10, 11), example="090-1234-5678",
                pattern=r"0\d{1,4}(?P<s>[- ])\d{1,4}(?P=s)\d{4}"),
    PhoneFormat(region="India", digits=(11, 11), example="098765 43210",
                pattern=r"0[6-9]\d{4}[ -]?\d{5}"),
)  # fmt: skip


def _nsn_ok(digits: str, plus: bool) -> bool:
    """``digits`` = country code + national number; E.164 caps the whole at 15 digits."""
    for k in (1, 2, 3):
        cc = digits[:k]
        if cc in COUNTRY_NSN:
            lo, hi = COUNTRY_NSN[cc]
            nsn = digits[k:]
            rule = _NSN_RULES.get(cc)
            return lo <= len(nsn) <= hi and (rule is None or rule.fullmatch(nsn) is not None)
    return plus and 8 <= len(digits) <= 15  # a code this table lacks: E.164 length only


def phone_ok(s: str) -> bool:
    """An international number (``+CC ...`` or ``00CC ...``, ``(0)`` trunk allowed) that fits its country's plan."""
    plus = s.startswith("+")
    if not plus and not s.startswith("00"):
        return False
    body = s[1:] if plus else s[2:]
    digits = re.sub(r"\D", "", body.replace("(0)", ""))
    if digits[:3] not in COUNTRY_NSN and digits[:2] not in COUNTRY_NSN and digits[:1] not in COUNTRY_NSN:
        plus = plus and not body.isdigit()  # unknown code: needs grouping, so +2147483647 is not a number
    return _nsn_ok(digits, plus)


# --- candidate patterns --------------------------------------------------------------------
_FILE_EXTS = frozenset(
    "png jpg jpeg gif svg webp bmp ico tif tiff heic avif pdf zip gz tgz bz2 xz tar rar js mjs ts css scss json "
    "xml yaml yml toml txt csv html htm php exe dll bin dmg iso mp3 mp4 m4a wav avi mov mkv webm ogg flac whl jar "
    "apk lock log ini cfg conf sh psd service socket target mount timer slice scope".split()
)  # an e-mail-shaped "domain" ending like this is a file name (icon@2x.png) or a systemd unit (user@1000.service)
_EMAIL_RE = re.compile(
    r"(?=[0-9A-Za-z])(?<![0-9A-Za-z._%+\-@])[0-9A-Za-z][0-9A-Za-z._%+\-]{0,63}"  # local part
    r"@((?:[0-9A-Za-z](?:[0-9A-Za-z\-]{0,61}[0-9A-Za-z])?\.)+[A-Za-z]{2,24})(?![0-9A-Za-z\-@])"  # domain, TLD
)
_ID_RE = re.compile(r"\d(?<![0-9A-Za-z\-]\d)(?:\d{16}[\dXx]|\d{5}(?P<s>[ -])\d{8}(?P=s)\d{3}[\dXx])(?![0-9A-Za-z])")
_CARD_RE = re.compile(
    r"\d(?<![0-9A-Za-z\-_]\d)(?<!\d[.,]\d)"  # the first digit, not inside a token or after a decimal point
    r"(?:\d{12,18}|\d{3}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?|\d{3}(?P<t>[ -])\d{6}(?P=t)\d{4,5})"
    r"(?![0-9A-Za-z\-_]|[.,]\d)"
)
_IPV4_RE = re.compile(r"\d(?<![0-9A-Za-z.\-_+]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![0-9A-Za-z_]|\.\d)")
_VERSION_CUE = re.compile(  # words that make a dotted quad a version or section number
    r"(?:\b(?:v|ver|version|release|build|firmware|rev|section)\.?|§|版本号?)\s*[:：]?\s*$", re.I
)
_SECTION_RE = re.compile(r"(?:[1-9]|1\d|20)(?:\.(?:[1-9]|1\d|20)){3}")  # 4.8.1.2 in a table of contents
_IPV6_RE = re.compile(
    r"(?=[0-9A-Fa-f:])(?<![0-9A-Za-z:.\-_])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[0-9A-Za-z]+)?(?![0-9A-Za-z_:]|\.\d)"
)
_PHONE_INTL_RE = re.compile(
    r"(?=[+0])(?<![0-9A-Za-z+\-._/])(?:\+|(?<!\d )00(?=[1-9]))\d{1,3}(?:[ .\-/]?\(\d{1,5}\)|[ .\-/]?\d{1,10}){0,7}"
)
# not inside a longer token, nor the later groups of a longer number (a card failing Luhn: 4235 0700 6388 9120)
_NAT_LEFT = r"(?=[0-9(（])(?<![0-9A-Za-z+\-./_@])(?<!\d[:, ])"
_NAT_RIGHT = r"(?![0-9A-Za-z]|[\-./]\d)"


def _named(pattern: str, i: int) -> str:
    return re.sub(r"\(\?P([<=])(\w+)", lambda m: f"(?P{m.group(1)}{m.group(2)}{i}", pattern)


_PHONE_ROWS = [re.compile(_NAT_LEFT + f"(?:{_named(f.pattern, i)})" + _NAT_RIGHT) for i, f in enumerate(PHONE_FORMATS)]
_PHONE_NAT_RE = re.compile(
    _NAT_LEFT + "(?:" + "|".join(f"(?P<r{i}>{_named(f.pattern, i)})" for i, f in enumerate(PHONE_FORMATS)) + ")"
    + _NAT_RIGHT
)  # fmt: skip


# --- checks: match -> (start, end) of the accepted span, or None -------------------------------
Check = Callable[[str, re.Match], "tuple[int, int] | None"]


def _check_email(text: str, m: re.Match) -> tuple[int, int] | None:
    local, domain = m.group().rsplit("@", 1)
    tld, first = domain.rsplit(".", 1)[-1].lower(), domain.split(".", 1)[0]
    if tld in _FILE_EXTS or re.fullmatch(r"\d+(?:\.\d+)?x", first) or ".." in local or local.endswith("."):
        return None
    return m.span()


def _check_id(text: str, m: re.Match) -> tuple[int, int] | None:
    return m.span() if cn_id_ok(re.sub(r"[ -]", "", m.group())) else None


def _check_card(text: str, m: re.Match) -> tuple[int, int] | None:
    s = m.group()
    if card_ok(s):
        return m.span()
    if len(s) > 19 and m.group("s") and card_ok(s[:19]):  # 4-4-4-4 then a short number (a CVV, say)
        return m.start(), m.start() + 19
    return None


def _check_ipv4(text: str, m: re.Match) -> tuple[int, int] | None:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    if _VERSION_CUE.search(text, max(0, m.start() - 12), m.start()):
        return None
    if _SECTION_RE.fullmatch(m.group()) and re.match(r"\.? +[A-Z]", text[m.end() : m.end() + 4]):
        return None  # a heading number: small non-zero parts, then a capitalised title ("4.8.1.2. Virtual envs")
    return m.span()


def _check_ipv6(text: str, m: re.Match) -> tuple[int, int] | None:
    s = m.group()
    core = s.split("%", 1)[0]
    if core.count(":") < 2 or not any(c.isdigit() for c in core):  # "::" alone, "DB::", times fail below
        return None
    if re.fullmatch(r"::[0-9]+", s) and re.search(r"[\w)\]]\[$", text[max(0, m.start() - 2) : m.start()]):
        return None  # a Python slice, m[::2]
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return m.span()


def _check_phone_intl(text: str, m: re.Match) -> tuple[int, int] | None:
    s = m.group()
    for e in range(len(s), 1, -1):  # longest prefix that ends a digit group and fits the plan
        if (s[e - 1].isdigit() or s[e - 1] == ")") and (e == len(s) or not s[e].isdigit()):
            nxt = s[e : e + 2]
            if len(nxt) == 2 and nxt[0] in ".-/" and nxt[1].isdigit():
                continue  # cutting 415-555|-0132 leaves half a number
            if phone_ok(s[:e]):
                return m.start(), m.start() + e
    return None


def _check_phone_nat(text: str, m: re.Match) -> tuple[int, int] | None:
    i = int(m.lastgroup[1:])
    lo, hi = PHONE_FORMATS[i].digits
    if lo <= sum(c.isdigit() for c in m.group()) <= hi:
        return m.span()
    best = None  # the first-listed format matched with the wrong length: try the others here
    for j, rx in enumerate(_PHONE_ROWS):
        if j != i and (n := rx.match(text, m.start())):
            lo, hi = PHONE_FORMATS[j].digits
            if lo <= sum(c.isdigit() for c in n.group()) <= hi and (best is None or n.end() > best[1]):
                best = n.span()
    return best


# (type, candidate regex, check, quick test that the text can hold this type at all)
_DETECTORS: tuple[tuple[str, re.Pattern, Check, Callable[[str], bool]], ...] = (
    ("EMAIL", _EMAIL_RE, _check_email, lambda t: "@" in t),
    ("ID_CN", _ID_RE, _check_id, lambda t: True),
    ("CARD", _CARD_RE, _check_card, lambda t: True),
    ("IPV6", _IPV6_RE, _check_ipv6, lambda t: ":" in t),
    ("IPV4", _IPV4_RE, _check_ipv4, lambda t: "." in t),
    ("PHONE", _PHONE_INTL_RE, _check_phone_intl, lambda t: "+" in t or "00" in t),
    ("PHONE", _PHONE_NAT_RE, _check_phone_nat, lambda t: True),
)
_DIGIT_RE = re.compile(r"\d")


def _types(types: Iterable[str] | str) -> set[str]:
    wanted = {types} if isinstance(types, str) else set(types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"types must be a subset of {PII_TYPES}, got unknown {sorted(unknown)}")
    return wanted


def find_pii(text: str, types: Iterable[str] | str = PII_TYPES) -> list[Span]:
    """All validated PII spans in ``text``, non-overlapping, sorted by start.

    ``types`` is a subset of :data:`PII_TYPES` (or one type name).
    """
    wanted = _types(types)
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if _DIGIT_RE.search(text) is None and "@" not in text:  # every type needs a digit except e-mail
        return []
    cands = []
    for typ, rx, check, may_hold in _DETECTORS:
        if typ not in wanted or not may_hold(text):
            continue
        pos = 0
        while m := rx.search(text, pos):
            span = check(text, m)
            if span is None:
                pos = m.start() + 1  # a rejected candidate may hide a valid one that starts inside it
                continue
            cands.append(Span(type=typ, start=span[0], end=span[1], value=text[span[0] : span[1]]))
            pos = span[1]
    cands.sort(key=lambda s: (PRIORITY[s.type], s.start - s.end, s.start))
    taken: list[Span] = []
    for c in cands:
        if all(c.end <= t.start or c.start >= t.end for t in taken):
            taken.append(c)
    return sorted(taken, key=lambda s: s.start)


def _placeholders(placeholders: Mapping[str, str] | None) -> dict[str, str]:
    if placeholders is None:
        return DEFAULT_PLACEHOLDERS
    bad = sorted(k for k in placeholders if k not in PII_TYPES)
    if bad or not all(isinstance(v, str) for v in placeholders.values()):
        got = bad or sorted(placeholders)
        raise ValueError(f"placeholders must map types among {PII_TYPES} to str, got keys {got}")
    return {**DEFAULT_PLACEHOLDERS, **placeholders}


def _mask(text: str, spans: list[Span], tags: Mapping[str, str]) -> str:
    out, pos = [], 0
    for s in spans:
        out += [text[pos : s.start], tags[s.type]]
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


def mask_pii(
    text: str, types: Iterable[str] | str = PII_TYPES, placeholders: Mapping[str, str] | None = None
) -> tuple[str, Counter]:
    """Replace each detected span with its placeholder; return ``(masked_text, Counter(type -> count))``.

    ``placeholders`` maps some types to replacement strings (the rest keep :data:`DEFAULT_PLACEHOLDERS`,
    ``<EMAIL>`` etc.); pass :data:`CS336_PLACEHOLDERS` for ``|||EMAIL_ADDRESS|||`` style tags.
    """
    tags = _placeholders(placeholders)
    spans = find_pii(text, types)
    return _mask(text, spans, tags), Counter(s.type for s in spans)


MASK_RE = re.compile(r"<(" + "|".join(PII_TYPES) + r")>")  # the default tags :func:`mask_pii` writes, e.g. ``<EMAIL>``


def first_mask(masked: str, original: str) -> tuple[re.Match, Span] | None:
    """The first tag in ``masked`` and the span of ``original`` it replaced; None when ``masked`` has no tag.

    ``masked`` is ``mask_pii(original)[0]``, possibly with whole lines removed since (a pipeline's
    repeated-line removal can drop a line that masking made identical to lines of other documents).
    The tag is matched to its span through the line it sits in.
    """
    tag = MASK_RE.search(masked)
    if tag is None:
        return None
    line_start = masked.rfind("\n", 0, tag.start()) + 1
    line_end = masked.find("\n", tag.end())
    line = masked[line_start : line_end if line_end >= 0 else len(masked)]
    full = mask_pii(original)[0]
    at = f"\n{full}\n".find(f"\n{line}\n")  # as a whole line: the same text inside a longer line is not it
    if at < 0:
        raise ValueError("masked is not mask_pii(original) with whole lines removed: a masked line is missing")
    tags = [m.start() for m in MASK_RE.finditer(full)]
    return tag, find_pii(original)[tags.index(at + tag.start() - line_start)]


def window(text: str, start: int, end: int, width: int = 40) -> str:
    """``text[start:end]`` with up to ``width`` characters either side, ``…`` where the text is cut.

    For showing one detected span or one mask in context, e.g. ``window(t, m.start(), m.end())``
    for ``m = MASK_RE.search(t)``.
    """
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"need 0 <= start <= end <= len(text), got {start}, {end}, {len(text)}")
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    lo, hi = max(0, start - width), min(len(text), end + width)
    return ("…" if lo > 0 else "") + text[lo:hi] + ("…" if hi < len(text) else "")


def pii_stage(max_pii_frac: float = 0.5, name: str = "pii", placeholders: Mapping[str, str] | None = None) -> Stage:
    """Mask PII (counts go to ``meta["pii"]``); drop documents whose text is mostly PII as ``"mostly_pii"``."""
    tags = _placeholders(placeholders)

    def fn(doc: Doc) -> Doc | str:
        text = doc["text"]
        spans = find_pii(text)
        if not spans:
            return doc
        covered = sum(s.end - s.start for s in spans)
        if covered > max_pii_frac * max(len(text.strip()), 1):
            return "mostly_pii"
        counts = Counter(s.type for s in spans)
        return {**doc, "text": _mask(text, spans, tags), "meta": {**doc.get("meta", {}), "pii": dict(counts)}}

    return Stage(name=name, fn=fn)


# --- synthetic labelled benchmark (llmbook.data.pii_benchmark builds the real-text DEV/TEST set) ----
_NAMES = ("li.wei", "zhang_min", "john.smith", "maria.garcia", "a.kumar", "wangfang88", "emma.j", "k.tanaka")
_DOMAINS = ("example.com", "mail.example.org", "163.com", "qq.com", "university.edu", "company.co.uk")
_REGIONS = ("110101", "310104", "440305", "510107", "330106", "420111")


def luhn_complete(prefix: str, length: int, r: random.Random) -> str:
    """``prefix`` + random digits + the one check digit that makes a ``length``-digit Luhn-valid number."""
    body = prefix + "".join(str(r.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    return next(body + c for c in "0123456789" if luhn_ok(body + c))


def random_cn_id(r: random.Random, regions: tuple[str, ...] = _REGIONS, years: tuple[int, int] = (1950, 2005)) -> str:
    """A valid 18-character resident id: region code, birth date in ``years``, sequence, check character."""
    born = _dt.date(years[0], 1, 1) + _dt.timedelta(days=r.randint(0, 365 * (years[1] - years[0])))
    first = f"{r.choice(regions)}{born:%Y%m%d}{r.randint(0, 999):03d}"
    return first + cn_id_check_char(first)


def _rand_phone(r: random.Random) -> str:
    cn = f"1{r.choice('3456789')}{r.randint(0, 9)}{r.randint(0, 99999999):08d}"
    return [lambda: cn, lambda: f"{cn[:3]} {cn[3:7]} {cn[7:]}", lambda: f"+86 {cn[:3]} {cn[3:7]} {cn[7:]}",
            lambda: f"+1 {r.randint(201, 989)}-555-{r.randint(0, 9999):04d}",
            lambda: f"+44 20 {r.randint(1000, 9999)} {r.randint(1000, 9999)}"][r.randrange(5)]()  # fmt: skip


def _rand_card(r: random.Random) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("62", 19), ("4", 13)])
    d, sep = luhn_complete(prefix, length, r), r.choice(["", " ", "-"])
    return sep.join(d[i : i + 4] for i in range(0, len(d), 4)) if sep else d


def _rand_ipv6(r: random.Random) -> str:
    groups = [f"{r.randint(0, 0xFFFF):x}" for _ in range(8)]
    return "2001:db8::" + ":".join(groups[:2]) if r.random() < 0.5 else ":".join(groups)


_GENERATORS: dict[str, tuple[Callable[[random.Random], str], tuple[str, ...]]] = {
    "EMAIL": (lambda r: f"{r.choice(_NAMES)}{r.choice(['', str(r.randint(1, 999))])}@{r.choice(_DOMAINS)}",
              ("Contact: {}.", "Write to {} for details.", "邮箱：{}。")),
    "PHONE": (_rand_phone, ("Call me at {} tomorrow.", "Tel: {}", "联系电话：{}。")),
    "CARD": (_rand_card, ("Card number {} was charged.", "Paid with {}.", "信用卡号 {} 已扣款。")),
    "IPV4": (lambda r: ".".join(str(r.randint(1 if i == 0 else 0, 254)) for i in range(4)),
             ("Login from {} failed.", "Server at {} is down.", "来自 {} 的访问。")),
    "IPV6": (_rand_ipv6, ("Host {} responded.", "IPv6 address: {}", "地址 {} 已封禁。")),
    "ID_CN": (random_cn_id, ("ID: {}.", "身份证号：{}。", "Citizen ID {} on file.")),
}  # fmt: skip


def random_pii_sentence(r: random.Random, typ: str | None = None) -> tuple[str, str, str]:
    """A generated PII item in a sentence: ``(sentence, type, value)``; ``value`` occurs in ``sentence``."""
    if typ is not None and typ not in _GENERATORS:
        raise ValueError(f"typ must be one of {sorted(_GENERATORS)} or None, got {typ!r}")
    typ = typ or r.choice(list(_GENERATORS))
    gen, templates = _GENERATORS[typ]
    value = gen(r)
    return r.choice(templates).format(value), typ, value


def _hard_negative(r: random.Random) -> str:
    """Look-alikes that must NOT be flagged: versions, dates, ISBNs, order ids, bad checksums."""
    n = r.randint

    def bad_id() -> str:  # resident-id shaped, wrong check character
        good = random_cn_id(r)
        return f"Ref {good[:17] + r.choice([c for c in '0123456789X' if c != good[17]])}."

    def bad_card() -> str:  # card shaped, fails Luhn
        good = luhn_complete("4", 16, r)
        bad = good[:15] + str((int(good[15]) + n(1, 9)) % 10)
        sep = r.choice(["", " ", "-"])
        return f"Tracking {sep.join(bad[i : i + 4] for i in range(0, 16, 4)) if sep else bad}."

    return [
        lambda: f"Python {n(2, 3)}.{n(0, 13)}.{n(0, 20)} was released.",
        lambda: f"On {n(1990, 2030)}-{n(1, 12):02d}-{n(1, 28):02d} at {n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d}.",
        lambda: f"ISBN 978-{n(0, 9)}-{n(100, 999)}-{n(10000, 99999)}-{n(0, 9)}.",
        lambda: f"Order ORD-{n(2020, 2030)}{n(1, 12):02d}{n(1, 28):02d}-{n(10000, 99999)} shipped.",
        bad_id, bad_card,
        lambda: f"Version {n(1, 9)}.{n(0, 9)}.{n(0, 99)}.{n(256, 9999)} build.",
        lambda: f"Invoice No. {n(10**9, 10**10 - 1)} paid.",
        lambda: f"Room {n(100, 999)}, call ext. {n(1000, 9999)}.",
    ][r.randrange(9)]()  # fmt: skip


def make_pii_benchmark(
    docs: Iterable[Doc | str], n: int, seed: int = 0, snippet_chars: int = 300
) -> list[tuple[str, list[Span]]]:
    """``n`` labelled texts: real text snippets with 1-3 generated PII items and 0-2 hard negatives inserted.

    Returns ``[(text, gold_spans)]``; gold spans are exact character offsets of inserted items. The
    formats are few and fixed; :func:`llmbook.data.pii_benchmark.build_pii_benchmark` is the held-out test.
    """
    pool = [d["text"] if isinstance(d, dict) else d for d in docs]
    pool = [t for t in pool if t.strip()]
    if not pool or n < 1:
        raise ValueError("docs must contain non-empty texts and n must be >= 1")
    r = random.Random(seed)
    out = []
    for _ in range(n):
        src = r.choice(pool)
        start = r.randrange(max(len(src) - snippet_chars, 1))
        sentences = re.split(r"(?<=[.!?。！？])\s*", src[start : start + snippet_chars])
        pieces: list[tuple[str, str | None, str]] = [(s, None, "") for s in sentences if s]
        for _ in range(r.randint(1, 3)):
            typ = r.choice(list(_GENERATORS))
            gen, templates = _GENERATORS[typ]
            pieces.insert(r.randint(0, len(pieces)), (r.choice(templates), typ, gen(r)))
        for _ in range(r.randint(0, 2)):
            pieces.insert(r.randint(0, len(pieces)), (_hard_negative(r), None, ""))
        text, gold = "", []
        for tmpl, typ, value in pieces:
            text += " " if text else ""
            if typ is None:
                text += tmpl
            else:
                pre = tmpl.index("{}")
                gold.append(Span(type=typ, start=len(text) + pre, end=len(text) + pre + len(value), value=value))
                text += tmpl.format(value)
        out.append((text, gold))
    return out


def _gold(spans: Iterable[Span | tuple[int, int, str]]) -> set[tuple[str, int, int]]:
    return {(s.type, s.start, s.end) if hasattr(s, "type") else (s[2], s[0], s[1]) for s in spans}  # Span-like


def evaluate_pii(
    bench: Iterable[tuple], detector: Callable[[str], list[Span]] = find_pii
) -> dict[str, dict[str, float]]:
    """Per-type precision/recall/F1 with exact (type, start, end) matching.

    ``bench`` items are ``(text, gold)`` or ``(text, lang, gold)`` (a ``pii_benchmark.PiiItem``); gold
    spans are :class:`Span` or ``(start, end, type)``. ``partial`` counts gold spans missed exactly but
    overlapped by a detected span of the same type (a boundary error rather than a miss).
    """
    tp, fp, fn, partial = Counter(), Counter(), Counter(), Counter()
    for item in bench:
        text, gold = item[0], getattr(item, "spans", item[-1])  # (text, gold), (text, lang, gold), PiiItem
        g, p = _gold(gold), _gold(detector(text))
        for t, *_ in g & p:
            tp[t] += 1
        for t, *_ in p - g:
            fp[t] += 1
        for t, s, e in g - p:
            fn[t] += 1
            partial[t] += any(pt == t and ps < e and s < pe for pt, ps, pe in p - g)
    res = {}
    for t in PII_TYPES:
        prec = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 1.0
        rec = tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else 1.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        res[t] = {"precision": prec, "recall": rec, "f1": f1, "tp": tp[t], "fp": fp[t], "fn": fn[t],
                  "partial": partial[t]}  # fmt: skip
    return res
