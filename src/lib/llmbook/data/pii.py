"""Personal information: detect, validate and mask; plus a labelled benchmark builder.

Detectors are regular expressions for candidates followed by *validators* - the part that
makes precision high: IP addresses must parse with :mod:`ipaddress`, payment cards must pass
the Luhn check (ISO/IEC 7812) and start with a known issuer prefix, Chinese resident IDs
(GB 11643-1999) must have a valid region digit, birth date and ISO 7064 MOD 11-2 check
character. Overlapping candidates are resolved by a fixed type priority
(:data:`PRIORITY`), e.g. an e-mail address swallows the phone-like digits inside it.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llmbook.data.pipeline import Doc, Stage

PII_TYPES = ("EMAIL", "ID_CN", "CARD", "IPV6", "IPV4", "PHONE")
PRIORITY = {t: i for i, t in enumerate(PII_TYPES)}  # earlier wins on overlap


@dataclass(frozen=True, kw_only=True)
class Span:
    """One detected item: ``text[start:end] == value``."""

    type: str  # one of PII_TYPES
    start: int  # character offset, inclusive
    end: int  # character offset, exclusive
    value: str  # the matched text


_EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*"  # local part
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-])"  # @domain, TLD of 2-24 letters
)
_ID_RE = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\dXx-])")
_IPV4_RE = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.]|\.\d)")
_IPV6_RE = re.compile(r"(?<![0-9A-Fa-f:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")
_PHONE_INTL_RE = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ -]?\(?\d{1,4}\)?){2,5}(?![\d])")
_PHONE_CN_RE = re.compile(r"(?<![\d+])1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# Visa 4; Mastercard 51-55, 2221; Amex 34, 37; JCB 35; Discover 6011, 65; UnionPay 62
CARD_PREFIXES = ("4", "51", "52", "53", "54", "55", "2221", "34", "37", "35", "6011", "65", "62")


def luhn_ok(digits: str) -> bool:
    """Luhn checksum: doubling every second digit from the right, the digit sum is 0 mod 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _id_shaped(s: str) -> bool:
    """A bare 18-digit run with a plausible birth date at positions 6..13 (a resident id, maybe mistyped)."""
    if len(s) != 18 or not s.isdigit() or s[0] not in "12345678":
        return False
    try:
        _dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return 1900 <= int(s[6:10]) <= _dt.date.today().year


def card_ok(s: str) -> bool:
    """13-19 digits (separators removed), a known issuer prefix, a valid Luhn checksum, and not id-shaped."""
    d = re.sub(r"[ -]", "", s)
    return 13 <= len(d) <= 19 and d.startswith(CARD_PREFIXES) and luhn_ok(d) and not _id_shaped(s)


def cn_id_check_char(first17: str) -> str:
    """GB 11643 check character: ISO 7064 MOD 11-2 over the first 17 digits."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS)) % 11]


def cn_id_ok(s: str) -> bool:
    """18 characters; region code starts with 1-8; birth date YYYYMMDD valid (1900..today); check char matches."""
    if len(s) != 18 or not s[:17].isdigit() or s[0] not in "12345678":
        return False
    try:
        born = _dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= born <= _dt.date.today() and cn_id_check_char(s[:17]) == s[17].upper()


def _ip_ok(s: str, version: int) -> bool:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    return ip.version == version


def _phone_ok(s: str) -> bool:
    n = sum(c.isdigit() for c in s)
    return 8 <= n <= 15


_DETECTORS: tuple[tuple[str, re.Pattern, Callable[[str], bool]], ...] = (
    ("EMAIL", _EMAIL_RE, lambda s: True),
    ("ID_CN", _ID_RE, cn_id_ok),
    ("CARD", _CARD_RE, card_ok),
    ("IPV6", _IPV6_RE, lambda s: s.count(":") >= 2 and any(c.isalnum() for c in s) and _ip_ok(s, 6)),
    ("IPV4", _IPV4_RE, lambda s: _ip_ok(s, 4)),
    ("PHONE", _PHONE_INTL_RE, _phone_ok),
    ("PHONE", _PHONE_CN_RE, lambda s: True),
)


def find_pii(text: str, types: Iterable[str] = PII_TYPES) -> list[Span]:
    """All validated PII spans in ``text``, non-overlapping, sorted by start."""
    wanted = set(types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"types must be a subset of {PII_TYPES}, got unknown {sorted(unknown)}")
    cands = []
    for typ, rx, ok in _DETECTORS:
        if typ not in wanted:
            continue
        for m in rx.finditer(text):
            if ok(m.group()):
                cands.append(Span(type=typ, start=m.start(), end=m.end(), value=m.group()))
    cands.sort(key=lambda s: (PRIORITY[s.type], s.start))
    taken: list[Span] = []
    for c in cands:
        if all(c.end <= t.start or c.start >= t.end for t in taken):
            taken.append(c)
    return sorted(taken, key=lambda s: s.start)


def mask_pii(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, Counter]:
    """Replace each detected span with ``<TYPE>``; return ``(masked_text, Counter(type -> count))``."""
    spans = find_pii(text, types)
    out, pos = [], 0
    for s in spans:
        out += [text[pos : s.start], f"<{s.type}>"]
        pos = s.end
    out.append(text[pos:])
    return "".join(out), Counter(s.type for s in spans)


MASK_RE = re.compile(r"<(" + "|".join(PII_TYPES) + r")>")  # the tags :func:`mask_pii` writes, e.g. ``<EMAIL>``


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
    at = full.find(line)
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


def pii_stage(max_pii_frac: float = 0.5, name: str = "pii") -> Stage:
    """Mask PII (counts go to ``meta["pii"]``); drop documents whose text is mostly PII as ``"mostly_pii"``."""

    def fn(doc: Doc) -> Doc | str:
        text = doc["text"]
        spans = find_pii(text)
        if not spans:
            return doc
        covered = sum(s.end - s.start for s in spans)
        if covered > max_pii_frac * max(len(text.strip()), 1):
            return "mostly_pii"
        masked, counts = mask_pii(text)
        return {**doc, "text": masked, "meta": {**doc.get("meta", {}), "pii": dict(counts)}}

    return Stage(name=name, fn=fn)


# --- synthetic labelled benchmark ---------------------------------------------------------
_NAMES = ("li.wei", "zhang_min", "john.smith", "maria.garcia", "a.kumar", "wangfang88", "emma.j", "k.tanaka")
_DOMAINS = ("example.com", "mail.example.org", "163.com", "qq.com", "university.edu", "company.co.uk")
_REGIONS = ("110101", "310104", "440305", "510107", "330106", "420111")


def _rand_email(r: random.Random) -> str:
    return f"{r.choice(_NAMES)}{r.choice(['', str(r.randint(1, 999))])}@{r.choice(_DOMAINS)}"


def _rand_phone(r: random.Random) -> str:
    cn = f"1{r.choice('3456789')}{r.randint(0, 9)}{r.randint(0, 99999999):08d}"
    k = r.randrange(5)
    if k == 0:
        return cn
    if k == 1:
        return f"{cn[:3]} {cn[3:7]} {cn[7:]}"
    if k == 2:
        return f"+86 {cn[:3]} {cn[3:7]} {cn[7:]}"
    if k == 3:
        return f"+1 {r.randint(201, 989)}-555-{r.randint(0, 9999):04d}"
    return f"+44 20 {r.randint(1000, 9999)} {r.randint(1000, 9999)}"


def _luhn_complete(prefix: str, length: int, r: random.Random) -> str:
    body = prefix + "".join(str(r.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    for c in "0123456789":
        if luhn_ok(body + c):
            return body + c
    raise AssertionError("unreachable")


def _fmt_card(d: str, r: random.Random) -> str:
    sep = r.choice(["", " ", "-"])
    return sep.join(d[i : i + 4] for i in range(0, len(d), 4)) if sep else d


def _rand_card(r: random.Random) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("62", 19), ("4", 13)])
    return _fmt_card(_luhn_complete(prefix, length, r), r)


def _rand_ipv4(r: random.Random) -> str:
    return ".".join(str(r.randint(1 if i == 0 else 0, 254)) for i in range(4))


def _rand_ipv6(r: random.Random) -> str:
    groups = [f"{r.randint(0, 0xFFFF):x}" for _ in range(8)]
    if r.random() < 0.5:
        return "2001:db8::" + ":".join(groups[:2])
    return ":".join(groups)


def _rand_id(r: random.Random) -> str:
    born = _dt.date(1950, 1, 1) + _dt.timedelta(days=r.randint(0, 365 * 55))
    first = f"{r.choice(_REGIONS)}{born:%Y%m%d}{r.randint(0, 999):03d}"
    return first + cn_id_check_char(first)


_GENERATORS = {
    "EMAIL": (_rand_email, ("Contact: {}.", "Write to {} for details.", "邮箱：{}。")),
    "PHONE": (_rand_phone, ("Call me at {} tomorrow.", "Tel: {}", "联系电话：{}。")),
    "CARD": (_rand_card, ("Card number {} was charged.", "Paid with {}.", "信用卡号 {} 已扣款。")),
    "IPV4": (_rand_ipv4, ("Login from {} failed.", "Server at {} is down.", "来自 {} 的访问。")),
    "IPV6": (_rand_ipv6, ("Host {} responded.", "IPv6 address: {}", "地址 {} 已封禁。")),
    "ID_CN": (_rand_id, ("ID: {}.", "身份证号：{}。", "Citizen ID {} on file.")),
}


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
    k = r.randrange(9)
    if k == 0:
        return f"Python {r.randint(2, 3)}.{r.randint(0, 13)}.{r.randint(0, 20)} was released."
    if k == 1:
        return (
            f"On {r.randint(1990, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
            f"at {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
        )
    if k == 2:
        return f"ISBN 978-{r.randint(0, 9)}-{r.randint(100, 999)}-{r.randint(10000, 99999)}-{r.randint(0, 9)}."
    if k == 3:
        return (
            f"Order ORD-{r.randint(2020, 2030)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}"
            f"-{r.randint(10000, 99999)} shipped."
        )
    if k == 4:  # resident-id shaped, wrong check character
        good = _rand_id(r)
        bad = good[:17] + r.choice([c for c in "0123456789X" if c != good[17]])
        return f"Ref {bad}."
    if k == 5:  # card shaped, fails Luhn
        good = _luhn_complete("4", 16, r)
        bad = good[:15] + str((int(good[15]) + r.randint(1, 9)) % 10)
        return f"Tracking {_fmt_card(bad, r)}."
    if k == 6:
        return f"Version {r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 99)}.{r.randint(256, 9999)} build."
    if k == 7:
        return f"Invoice No. {r.randint(10**9, 10**10 - 1)} paid."
    return f"Room {r.randint(100, 999)}, call ext. {r.randint(1000, 9999)}."


def make_pii_benchmark(
    docs: Iterable[Doc | str], n: int, seed: int = 0, snippet_chars: int = 300
) -> list[tuple[str, list[Span]]]:
    """``n`` labelled texts: real text snippets with 1-3 generated PII items and 0-2 hard negatives inserted.

    Returns ``[(text, gold_spans)]``; gold spans are exact character offsets of inserted items.
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
        base = src[start : start + snippet_chars]
        sentences = re.split(r"(?<=[.!?。！？])\s*", base)
        pieces: list[tuple[str, str | None, str]] = [(s, None, "") for s in sentences if s]
        for _ in range(r.randint(1, 3)):
            typ = r.choice(list(_GENERATORS))
            gen, templates = _GENERATORS[typ]
            pieces.insert(r.randint(0, len(pieces)), (r.choice(templates), typ, gen(r)))
        for _ in range(r.randint(0, 2)):
            pieces.insert(r.randint(0, len(pieces)), (_hard_negative(r), None, ""))
        text, gold = "", []
        for tmpl, typ, value in pieces:
            if text:
                text += " "
            if typ is None:
                text += tmpl
            else:
                pre = tmpl.index("{}")
                gold.append(Span(type=typ, start=len(text) + pre, end=len(text) + pre + len(value), value=value))
                text += tmpl.format(value)
        out.append((text, gold))
    return out


def evaluate_pii(
    bench: list[tuple[str, list[Span]]], detector: Callable[[str], list[Span]] = find_pii
) -> dict[str, dict[str, float]]:
    """Per-type precision/recall/F1 with exact (type, start, end) matching."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for text, gold in bench:
        g = {(s.type, s.start, s.end) for s in gold}
        p = {(s.type, s.start, s.end) for s in detector(text)}
        for t, *_ in g & p:
            tp[t] += 1
        for t, *_ in p - g:
            fp[t] += 1
        for t, *_ in g - p:
            fn[t] += 1
    res = {}
    for t in PII_TYPES:
        prec = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 1.0
        rec = tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else 1.0
        res[t] = {
            "precision": prec,
            "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "tp": tp[t],
            "fp": fp[t],
            "fn": fn[t],
        }
    return res
