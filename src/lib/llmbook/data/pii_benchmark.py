"""A labelled PII benchmark on real English and Chinese text, with DEV and TEST splits.

Each item is a passage of real text (1-3 consecutive sentences of one bundled document) with
1-3 generated PII values and 0-3 hard negatives (look-alikes: file names with ``@``, package
specs, versions, dates, times, ISBNs, hashes, UUIDs, long constants, failed checksums, prices,
coordinates, order numbers) inserted as whole sentences, inline at a word boundary, directly
after a CJK character, or just before punctuation. Gold spans are the exact character offsets
of the inserted values.

DEV and TEST never share a carrier source, a value seed or a value pool (names, domains, region
codes), nor sentence templates; TEST adds *held-out format variants* that no DEV item uses
(e.g. ``415.555.0132``, ``+44 (0)20 7946 0958``, dash-grouped Amex, 19-digit UnionPay, zone ids
``fe80::1%eth0``, lowercase ``x`` ID check characters). Tune a detector on DEV, report TEST.

Carriers (``data/*.jsonl.gz``): DEV English = Austen + Wikipedia, DEV Chinese = 论语/诗经/... classics
+ the Debian FAQ (zh); TEST English = Moby Dick + Python docs + Debian reference (en), TEST Chinese
= Tang/Song poetry + Debian reference (zh). Sentences that may already hold personal data (an ``@``,
a URL, long digit runs, colon groups, dotted quads) are left out, so every unlabelled
detection is a false positive.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from llmbook.data.corpora import data_dir
from llmbook.data.pii import PII_TYPES, Span, cn_id_check_char, evaluate_pii, find_pii, luhn_complete, random_cn_id

SPLITS = ("dev", "test")
LANGS = ("en", "zh")
# (split, lang) -> ((corpus file stem, meta.source or None for all, meta.lang or None), ...)
CARRIER_SOURCES: dict[tuple[str, str], tuple[tuple[str, str | None, str | None], ...]] = {
    ("dev", "en"): (("austen", None, None), ("rag_distractors", "wikipedia", "en")),
    ("dev", "zh"): (("chinese_classics", None, None), ("faq", "debian-faq", "zh")),
    ("test", "en"): (("moby_dick", None, None), ("rag_distractors", "python-docs", "en"),
                     ("rag_distractors", "debian-reference", "en")),
    ("test", "zh"): (("tang_song_poetry", None, None), ("rag_distractors", "debian-reference", "zh")),
}  # fmt: skip


class PiiItem(NamedTuple):
    """One labelled text; ``evaluate_pii`` takes a list of these as it is."""

    text: str  # carrier passage with values inserted
    lang: str  # "en" or "zh": the carrier's language
    spans: tuple[tuple[int, int, str], ...]  # gold (start, end, type), sorted by start
    source: str  # id of the carrier document


# --- value generators: (format name, held out of DEV?, fn(r, pool) -> (before, value, after)) ---------
Gen = Callable[[random.Random, dict], tuple[str, str, str]]
POOLS = {  # DEV and TEST draw names, domains and region codes from disjoint pools
    "dev": {"names": ("li.wei", "zhang_min", "john.smith", "maria.garcia", "a.kumar", "emma.j", "k.tanaka", "wangfang"),
            "domains": ("example.com", "mail.example.org", "163.com", "qq.com", "university.edu", "company.co.uk"),
            "regions": ("110101", "310104", "440305", "510107", "330106", "420111"), "years": (1950, 2000)},
    "test": {"names": ("chen.jie", "liu_yang", "olivia.brown", "ahmed.ali", "s.nakamura", "noah", "zhao.lei", "p-roy"),
             "domains": ("sina.com.cn", "126.com", "gmail.com", "corp-x.io", "hospital.org.uk", "yahoo.co.jp"),
             "regions": ("320102", "370202", "500103", "610113", "210106", "350203"), "years": (1960, 2008)},
}  # fmt: skip


def _d(r: random.Random, n: int) -> str:
    return "".join(r.choice(string.digits) for _ in range(n))


def _plain(s: str) -> tuple[str, str, str]:
    return "", s, ""


def _nanp(r: random.Random) -> tuple[str, str, str]:
    return f"{r.randint(2, 9)}{_d(r, 2)}", f"{r.randint(2, 9)}{_d(r, 2)}", _d(r, 4)


def _cn_mobile(r: random.Random) -> tuple[str, str, str]:
    return f"1{r.choice('3456789')}{r.randint(0, 9)}", _d(r, 4), _d(r, 4)


def _cn_land(r: random.Random) -> tuple[str, str]:
    area = r.choice(["10", "20", "21", "22", "23", "24", "25", "27", "28", "29", "311", "371", "431", "451", "531",
                     "551", "571", "591", "731", "755", "769", "871", "898"])  # fmt: skip
    return area, f"{r.randint(2, 8)}{_d(r, 7 if len(area) == 2 else r.choice([6, 7]))}"


def _grp(s: str, sizes: Sequence[int], sep: str) -> str:
    out, i = [], 0
    for k in sizes:
        out.append(s[i : i + k])
        i += k
    return sep.join(out)


def _email(r: random.Random, p: dict, style: str) -> tuple[str, str, str]:
    name, dom = r.choice(p["names"]), r.choice(p["domains"])
    if style == "digits":
        name = f"{name}{r.randint(1, 999)}"
    elif style == "plus":
        name = f"{name}+{r.choice(['news', 'x1', 'bills'])}"
    elif style == "upper":
        name, dom = name.title(), dom.upper()
    elif style == "numeric":  # QQ-style all-digit mailbox
        name, dom = f"{r.randint(1, 9)}{_d(r, r.randint(5, 9))}", r.choice(["qq.com", "vip.qq.com", "139.com"])
    elif style == "subdomain":
        name, dom = f"{name}.{r.randint(1, 99)}", f"mail{r.randint(2, 9)}.dept-{r.choice('abxyz')}.{dom}"
    return _plain(f"{name}@{dom}")


def _card(r: random.Random, brand: str, grouping: str) -> tuple[str, str, str]:
    prefix, length = {
        "visa16": ("4", 16), "visa13": ("4", 13), "visa19": ("4", 19), "mc5x": (f"5{r.randint(1, 5)}", 16),
        "mc2x": (str(r.randint(2221, 2720)), 16), "amex": (r.choice(["34", "37"]), 15),
        "discover": (r.choice(["6011", str(r.randint(644, 649)), "65"]), 16), "jcb": (str(r.randint(3528, 3589)), 16),
        "unionpay16": ("62", 16), "unionpay19": ("62", 19), "diners": (r.choice(["36", str(r.randint(300, 305))]), 14),
        "maestro": (r.choice(["6759", "5018", "6304", "6763"]), 16),
    }[brand]  # fmt: skip
    d = luhn_complete(prefix, length, r)
    sizes = {13: (4, 4, 5), 14: (4, 6, 4), 15: (4, 6, 5), 16: (4, 4, 4, 4), 19: (4, 4, 4, 4, 3)}[length]
    return _plain(d if grouping == "bare" else _grp(d, sizes, " " if grouping == "space" else "-"))


def _phone(r: random.Random, fmt: str) -> tuple[str, str, str]:
    a, b, c = _nanp(r)
    m1, m2, m3 = _cn_mobile(r)
    area, loc = _cn_land(r)
    uk, de, fr, jp, inm = _d(r, 8), _d(r, 8), _d(r, 8), _d(r, 8), f"{r.randint(6, 9)}{_d(r, 9)}"
    ukm, de_a = f"7{r.randint(4, 9)}{_d(r, 8)}", f"{r.randint(2, 9)}{_d(r, 1)}"
    jp_a, jpm = r.choice("36"), r.choice("789")
    fr1 = _grp(f"{r.randint(1, 5)}{fr}", (1, 2, 2, 2, 2), " ")
    fr6 = _grp(f"{r.randint(6, 7)}{fr}", (1, 2, 2, 2, 2), " ")
    out = {
        "us_paren": f"({a}) {b}-{c}", "us_dash": f"{a}-{b}-{c}", "us_intl": f"+1 {a} {b} {c}",
        "cn_bare": f"{m1}{m2}{m3}", "cn_space": f"{m1} {m2} {m3}", "cn_intl": f"+86 {m1} {m2} {m3}",
        "cn_land": f"0{area}-{loc}", "uk": f"020 {uk[:4]} {uk[4:]}", "uk_intl": f"+44 20 {uk[:4]} {uk[4:]}",
        "de": f"030 {de}", "de_intl": f"+49 30 {de}", "fr": f"0{fr1}", "fr_intl": f"+33 {fr1}",
        "jp": f"0{jp_a}-{jp[:4]}-{jp[4:]}", "jp_intl": f"+81 {jp_a}-{jp[:4]}-{jp[4:]}",
        "in_intl": f"+91 {inm[:5]} {inm[5:]}", "in": f"0{inm[:5]} {inm[5:]}",
        # held out of DEV
        "us_dot": f"{a}.{b}.{c}", "us_1800": f"1-{r.choice(['800', '888', '877'])}-{b}-{c}",
        "us_intl_dash": f"+1-{a}-{b}-{c}", "us_intl_paren": f"+1 ({a}) {b}-{c}", "us_e164": f"+1{a}{b}{c}",
        "cn_dash": f"{m1}-{m2}-{m3}", "cn_00": f"0086 {m1} {m2} {m3}", "cn_e164": f"+86{m1}{m2}{m3}",
        "cn_land_paren": f"(0{area}) {loc[:-4]} {loc[-4:]}", "cn_land_intl": f"+86 {area} {loc[:-4]} {loc[-4:]}",
        "uk_mobile": f"0{ukm[:4]} {ukm[4:]}", "uk_trunk": f"+44 (0)20 {uk[:4]} {uk[4:]}",
        "uk_m_intl": f"+44 {ukm[:4]} {ukm[4:]}", "de_mobile": f"015{r.randint(1, 9)} {de}",
        "de_slash": f"0{de_a}9/{de[:7]}", "de_trunk": f"+49 (0)30 {de}", "fr_dot": "0" + fr6.replace(" ", "."),
        "fr_trunk": f"+33 (0){fr6}", "jp_mobile": f"0{jpm}0-{jp[:4]}-{jp[4:]}",
        "jp_m_intl": f"+81 {jpm}0 {jp[:4]} {jp[4:]}", "in_dash": f"+91-{inm[:5]}-{inm[5:]}", "in_e164": f"+91{inm}",
    }[fmt]  # fmt: skip
    return _plain(out)


def _ipv4(r: random.Random) -> str:
    n = r.randint
    return r.choice([f"192.168.{n(0, 255)}.{n(1, 254)}", f"10.{n(0, 255)}.{n(0, 255)}.{n(1, 254)}",
                     ".".join(str(n(1 if i == 0 else 0, 255)) for i in range(4))])  # fmt: skip


def _ipv6(r: random.Random, fmt: str) -> tuple[str, str, str]:
    g = [f"{r.randint(0, 0xFFFF):x}" for _ in range(8)]
    v = {"full": ":".join(g), "doc": f"2001:db8::{g[0]}:{g[1]}", "link": f"fe80::{':'.join(g[:4])}",
         "mapped": f"::ffff:{_ipv4(r)}", "bracket": f"2001:db8:{g[2]}::{g[3]}", "upper": ":".join(g).upper(),
         "zeros": ":".join(f"{int(x, 16):04x}" for x in g[:4]) + ":0000:0000:" + ":".join(g[6:]),
         "zone": f"fe80::{g[0]}:{g[1]}%{r.choice(['eth0', 'en0', 'wlan0', '3'])}", "loop": "::1",
         "url": f"2001:db8:{g[4]}::{g[5]}"}[fmt]  # fmt: skip
    if fmt == "bracket":
        return "[", v, f"]:{r.choice([80, 443, 8080, 8443])}"
    if fmt == "url":
        return "http://[", v, "]/"
    return _plain(v)


def _ipv4_fmt(r: random.Random, fmt: str) -> tuple[str, str, str]:
    v = _ipv4(r)
    return {"plain": ("", v, ""), "port": ("", v, f":{r.choice([22, 80, 8080, 3306])}"),
            "url": ("http://", v, f"/{r.choice(['admin', 'login', 'api/v1'])}")}[fmt]  # fmt: skip


def _cn_id(r: random.Random, p: dict, fmt: str) -> tuple[str, str, str]:
    v = random_cn_id(r, p["regions"], p["years"])
    if fmt == "lower_x":  # force a check character X, written lowercase
        while v[-1] != "X":
            v = random_cn_id(r, p["regions"], p["years"])
        v = v[:-1] + "x"
    return _plain(f"{v[:6]} {v[6:14]} {v[14:]}" if fmt == "grouped" else v)


_HELD_PHONES = ("us_dot", "us_1800", "us_intl_dash", "us_intl_paren", "us_e164", "cn_dash", "cn_00", "cn_e164",
                "cn_land_paren", "cn_land_intl", "uk_mobile", "uk_trunk", "uk_m_intl", "de_mobile", "de_slash",
                "de_trunk", "fr_dot", "fr_trunk", "jp_mobile", "jp_m_intl", "in_dash", "in_e164")  # fmt: skip
_DEV_PHONES = ("us_paren", "us_dash", "us_intl", "cn_bare", "cn_space", "cn_intl", "cn_land", "uk", "uk_intl", "de",
               "de_intl", "fr", "fr_intl", "jp", "jp_intl", "in_intl", "in")  # fmt: skip
_DEV_CARDS = [(b, g) for b in ("visa16", "mc5x", "mc2x", "discover", "jcb", "unionpay16", "maestro")
              for g in ("bare", "space", "dash")] + [
    ("amex", "space"), ("amex", "bare"), ("diners", "space"), ("visa13", "bare"), ("unionpay19", "bare")]
_HELD_CARDS = [("amex", "dash"), ("diners", "dash"), ("unionpay19", "space"), ("visa19", "dash"), ("visa19", "bare")]
# fmt: skip


@functools.cache
def formats(typ: str) -> tuple[tuple[str, bool, Gen], ...]:
    """``(format name, held out of DEV, generator)`` for one type; generators return ``(before, value, after)``."""
    if typ == "EMAIL":
        return tuple((s, s in {"upper", "numeric", "subdomain"}, functools.partial(_email, style=s))
                     for s in ("plain", "digits", "plus", "upper", "numeric", "subdomain"))  # fmt: skip
    if typ == "PHONE":
        return tuple((f, f in _HELD_PHONES, lambda r, p, f=f: _phone(r, f)) for f in _DEV_PHONES + _HELD_PHONES)
    if typ == "CARD":
        return tuple((f"{b}/{g}", (b, g) in _HELD_CARDS, lambda r, p, b=b, g=g: _card(r, b, g))
                     for b, g in _DEV_CARDS + _HELD_CARDS)  # fmt: skip
    if typ == "IPV4":
        return tuple((f, f != "plain", lambda r, p, f=f: _ipv4_fmt(r, f)) for f in ("plain", "plain", "port", "url"))
    if typ == "IPV6":
        return tuple((f, f in {"upper", "zeros", "zone", "loop", "url"}, lambda r, p, f=f: _ipv6(r, f))
                     for f in ("full", "doc", "link", "mapped", "bracket", "upper", "zeros", "zone", "loop", "url"))
    if typ == "ID_CN":
        return tuple((f, f != "plain", functools.partial(_cn_id, fmt=f))
                     for f in ("plain", "plain", "lower_x", "grouped"))  # fmt: skip
    raise ValueError(f"typ must be one of {PII_TYPES}, got {typ!r}")


# --- hard negatives: (name, held out of DEV, fn(r, lang) -> phrase that must not be detected) -----------
def _date(r: random.Random) -> tuple[int, int, int]:
    return r.randint(1990, 2030), r.randint(1, 12), r.randint(1, 28)


def _bad_card(r: random.Random, prefix: str, sep: str) -> str:
    d = luhn_complete(prefix, 16, r)
    return _grp(d[:15] + str((int(d[15]) + r.randint(1, 9)) % 10), (4, 4, 4, 4), sep)


def _bad_id(r: random.Random, p: dict, date: bool) -> str:
    v = random_cn_id(r, p["regions"], p["years"])
    if date:  # month 13 with a matching check character: only the date check can reject it
        first = v[:10] + "13" + v[12:17]
        return first + cn_id_check_char(first)
    return v[:17] + r.choice([c for c in "0123456789X" if c != v[17]])


def _hex(r: random.Random, n: int) -> str:
    return "".join(r.choice("0123456789abcdef") for _ in range(n))


def _negative(r: random.Random, p: dict, name: str, lang: str) -> str:
    n, (y, mo, dd) = r.randint, _date(r)
    if name == "uuid":
        return f"{_hex(r, 8)}-{_hex(r, 4)}-4{_hex(r, 3)}-{r.choice('89ab')}{_hex(r, 3)}-{_hex(r, 12)}"
    if name in ("bad_id", "bad_id_date"):
        return _bad_id(r, p, name == "bad_id_date")
    return {
        "file_at": f"{r.choice(['icon', 'logo', 'btn_close', 'avatar'])}@{n(2, 3)}x.{r.choice(['png', 'jpg'])}",
        "pkg": f"{r.choice(['requests', 'numpy', 'flask', 'django'])}@{n(1, 4)}.{n(0, 30)}.{n(0, 9)}",
        "version": f"Python 3.{n(6, 13)}.{n(0, 20)}",
        "version4": f"{'version ' if lang == 'en' else '版本'}{n(1, 9)}.{n(0, 20)}.{n(0, 99)}.{n(0, 255)}",
        "date_iso": f"{y}-{mo:02d}-{dd:02d}", "date_dot": f"{y}.{mo:02d}.{dd:02d}",
        "time": f"{n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d}",
        "isbn13": f"ISBN 978-{n(0, 9)}-{n(100, 999)}-{n(10000, 99999)}-{n(0, 9)}",
        "const": r.choice(["2147483647", "4294967295", "9007199254740993", "65535", str(n(10**9, 10**10 - 1))]),
        "bad_card": _bad_card(r, "4", " "),
        "price": r.choice([f"${n(1, 9)},{n(0, 999):03d}.{n(0, 99):02d}", f"¥{n(1, 99)},{n(0, 999):03d}"]),
        "coords": f"({n(-89, 89)}.{_d(r, 4)}, {n(-179, 179)}.{_d(r, 4)})",
        "order": f"ORD-{y}{mo:02d}{dd:02d}-{n(10000, 99999)}",
        "bad_ip": f"{n(256, 999)}.{n(0, 255)}.{n(0, 255)}.{n(256, 999)}",
        # held out of DEV
        "file_at2": f"{r.choice(['banner', 'hero'])}@{r.choice(['2x', '1.5x'])}.{r.choice(['webp', 'svg', 'gif'])}",
        "pkg_scoped": r.choice([f"@types/node@{n(14, 22)}.{n(0, 9)}.{n(0, 9)}", f"lodash@4.17.{n(10, 21)}"]),
        "semver_pre": f"v{n(1, 9)}.{n(0, 9)}.{n(0, 9)}-rc.{n(1, 5)}",
        "win_build": f"10.0.{n(10000, 22999)}.{n(1000, 4000)}",
        "dotted5": ".".join(str(n(0, 9)) for _ in range(5)), "oid": f"1.3.6.1.4.1.{n(100, 60000)}.{n(1, 99)}",
        "date_slash": f"{dd:02d}/{mo:02d}/{y}", "date_zh": f"{y}年{mo}月{dd}日",
        "time_ms": f"{n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d}.{n(0, 999):03d}",
        "isbn10": f"ISBN 0-{n(100, 999)}-{n(10000, 99999)}-{n(0, 9)}", "sha1": _hex(r, 40), "md5": _hex(r, 32),
        "const_big": r.choice(["18446744073709551615", "6.02214076e23", "3.141592653589793", "1.602176634e-19"]),
        "bad_card_mc": _bad_card(r, f"5{n(1, 5)}", "-"), "price_eu": f"€ {n(1, 9)} {n(0, 999):03d},{n(0, 99):02d}",
        "coords_deg": f"{n(0, 89)}.{_d(r, 4)}° N, {n(0, 179)}.{_d(r, 4)}° E",
        "order_hash": f"Order #{y}-{mo:02d}{dd:02d}-{n(1000, 9999)}",
        "order_zh": f"订单号{y}{mo:02d}{dd:02d}{_d(r, 6)}",
        "mac": ":".join(f"{n(0, 255):02X}" for _ in range(6)),
    }[name]  # fmt: skip


NEGATIVES_DEV = ("file_at", "pkg", "version", "version4", "date_iso", "date_dot", "time", "isbn13", "uuid", "const",
                 "bad_card", "bad_id", "price", "coords", "order", "bad_ip")  # fmt: skip
NEGATIVES_HELD_OUT = ("file_at2", "pkg_scoped", "semver_pre", "win_build", "dotted5", "oid", "date_slash", "date_zh",
                      "time_ms", "isbn10", "sha1", "md5", "const_big", "bad_card_mc", "bad_id_date", "price_eu",
                      "coords_deg", "order_hash", "order_zh", "mac")  # fmt: skip

# Sentence templates; DEV uses the even-indexed ones, TEST the odd-indexed ones.
TEMPLATES = {
    "en": {
        "EMAIL": ("Write to {} for a copy.", "Contact: {}", "Questions should go to {}.",
                  "Send your reply to {}, please.", "My address is {} if you need it.", "Email {} before Friday."),
        "PHONE": ("Call {} for details.", "Tel: {}.", "You can reach me on {} in the evening.",
                  "Phone {} (office hours).", "For bookings ring {}.", "Her number is {}, I think."),
        "CARD": ("Card number {} was charged.", "Please bill {} this month.", "The card {} expired.",
                 "Payment by card {} failed.", "Use {} for the deposit.", "Charge it to {}, thanks."),
        "IPV4": ("Login from {} failed.", "The server at {} is down.", "Blocked IP: {}",
                 "Requests from {} were throttled.", "Ping {} to check.", "The gateway is {}."),
        "IPV6": ("Host {} responded.", "The request came from {}.", "IPv6: {}", "Connect to {} instead.",
                 "Traffic from {} was dropped.", "Its address is {}."),
        "ID_CN": ("ID card {} on file.", "Resident ID: {}.", "His ID number is {}.", "The form lists ID {}.",
                  "Citizen ID {} was verified.", "Enter {} as the ID."),
        "NEG": ("The file was {}.", "See {} in the notes.", "It was recorded as {}.", "Reference: {}.",
                "They cited {} again.", "Noted: {}"),
    },
    "zh": {
        "EMAIL": ("请联系{}。", "邮箱：{}", "如有疑问请发邮件至{}。", "电子邮件{}，欢迎来信。",
                  "简历请投递到{}", "我的邮箱是{}。"),
        "PHONE": ("电话{}。", "联系电话：{}", "手机号码是{}，请保持畅通。", "请拨打{}咨询。",
                  "订餐热线{}", "有事打我电话{}！"),
        "CARD": ("银行卡号{}。", "信用卡{}已扣款。", "卡号：{}", "请向{}转账。", "退款将退回卡{}。",
                 "我的卡号是{}，请核对。"),
        "IPV4": ("访问来自{}。", "服务器地址{}无法连接。", "IP：{}", "请将网关设为{}。",
                 "来自{}的请求被拒绝。", "本机地址是{}"),
        "IPV6": ("IPv6地址为{}。", "主机{}已响应。", "IPv6：{}", "请连接{}。", "来自{}的流量被丢弃。", "它的地址是{}"),
        "ID_CN": ("身份证号{}。", "公民身份号码：{}", "身份证{}已登记。", "请填写身份证号码{}", "证件号{}，姓名张三。",
                  "他的身份证是{}。"),
        "NEG": ("资料中提到{}。", "记录为{}。", "参见{}。", "备注：{}", "文中写着{}。", "见{}"),
    },
}  # fmt: skip
CUES = {  # inline cue words written before a value ("" = the bare value)
    "en": {"EMAIL": ("", "email ", "mailto:"), "PHONE": ("", "call ", "tel. "), "CARD": ("", "card "),
           "IPV4": ("", "from "), "IPV6": ("", "host "), "ID_CN": ("", "ID "), "NEG": ("",)},
    "zh": {"EMAIL": ("", "邮箱", "发邮件至"), "PHONE": ("", "电话", "致电"), "CARD": ("", "卡号"),
           "IPV4": ("", "地址"), "IPV6": ("", "地址"), "ID_CN": ("", "身份证"), "NEG": ("",)},
}  # fmt: skip


# --- carriers --------------------------------------------------------------------------------
_MAYBE_PII = re.compile(r"@|://|www\.|\d{5,}|\d[\d ().\-/]{7,}\d|[0-9A-Fa-f]*:[0-9A-Fa-f]*:|\d+\.\d+\.\d+\.\d+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_EN_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(A-Z])")
_ZH_SENT = re.compile(r"[^。！？；\n]+[。！？；]?")


def carrier_sentences(text: str, lang: str) -> list[str]:
    """Sentences of ``text`` usable as carriers: sensible length, no possible personal data already in them."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    if lang == "en":
        sents = [s.strip() for line in text.split("\n") for s in _EN_SPLIT.split(line)]
        sents = [s for s in sents if 25 <= len(s) <= 400 and " " in s]
    else:
        sents = [s.strip() for s in _ZH_SENT.findall(text)]
        sents = [s for s in sents if 6 <= len(s) <= 200 and len(_CJK.findall(s)) >= 0.5 * len(s)]
    return [s for s in sents if not _MAYBE_PII.search(s)]


@functools.lru_cache(maxsize=8)
def bundled_carriers(split: str, lang: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(doc_id, sentences)`` of the split's carrier documents (:data:`CARRIER_SOURCES`), in file order."""
    if (split, lang) not in CARRIER_SOURCES:
        raise ValueError(f"split must be one of {SPLITS} and lang one of {LANGS}, got {split!r}, {lang!r}")
    out = []
    for stem, source, want_lang in CARRIER_SOURCES[(split, lang)]:
        with gzip.open(data_dir() / f"{stem}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                meta = row.get("meta", {})
                if source is not None and source not in (meta.get("source"), row.get("source")):
                    continue
                if want_lang is not None and want_lang not in (meta.get("lang"), row.get("lang")):
                    continue
                sents = carrier_sentences(row.get("text") or row.get("answer", ""), lang)
                if sents:
                    out.append((row["id"], tuple(sents)))
    return tuple(out)


# --- planting ------------------------------------------------------------------------------------
def _slots(seg: str, lang: str, mode: str) -> list[int]:
    """Where a value may go strictly inside carrier text ``seg``: a word boundary or, in Chinese, right after a
    CJK character (mode ``"inline"``), or just before punctuation (``"punct"``)."""
    if lang == "en":
        if mode == "inline":
            return [i for i, c in enumerate(seg) if c == " " and i > 0]
        ends = [i for i in range(1, len(seg)) if seg[i] in ",.;!?" and seg[i - 1].isalpha()]
        return [i for i in ends if seg[i + 1 : i + 2] in ("", " ")]  # sentence punctuation, not os.path
    if mode == "inline":  # never glued to ASCII text that would extend the value
        glued = [not (c.isascii() and not c.isspace()) for c in seg]
        return [i for i in range(1, len(seg)) if _CJK.match(seg[i - 1]) and glued[i]]
    return [i for i in range(1, len(seg)) if seg[i] in "，。；！？、：" and _CJK.match(seg[i - 1])]


def _plant(r: random.Random, sents: Sequence[str], lang: str, split: str, n_pii: int, n_neg: int) -> tuple[str, list]:
    """Insert ``n_pii`` values and ``n_neg`` look-alikes; labels: None carrier, "CTX" template/cue, "NEG", a type."""
    pool, held_ok, pad = POOLS[split], split == "test", " " if lang == "en" else ""
    sentences: list[list[tuple[str, str | None]]] = [[(s, None)] for s in sents]
    for typ in r.sample(list(PII_TYPES) * 3, n_pii) + ["NEG"] * n_neg:
        if typ == "NEG":
            names = NEGATIVES_DEV + (NEGATIVES_HELD_OUT if held_ok else ())
            before, value, after = "", _negative(r, pool, r.choice(names), lang), ""
        else:
            fmts = [f for f in formats(typ) if held_ok or not f[1]]
            before, value, after = r.choice(fmts)[2](r, pool)
        mode = r.choice(["sentence", "inline", "punct"])
        carriers = [(i, j) for i, s in enumerate(sentences) for j, (_, lab) in enumerate(s) if lab is None]
        i, j = r.choice(carriers)
        seg = sentences[i][j][0]
        slots = _slots(seg, lang, mode) if mode != "sentence" else []
        if not slots:
            pre, post = r.choice(TEMPLATES[lang][typ][held_ok::2]).split("{}")
            sentences.insert(r.randint(0, len(sentences)), [(pre + before, "CTX"), (value, typ), (after + post, "CTX")])
            continue
        k = r.choice(slots)
        if r.random() < 0.15:  # in parentheses
            before, after = ("(" if lang == "en" else "（") + before, after + (")" if lang == "en" else "）")
        sentences[i][j : j + 1] = [(seg[:k], None), (pad + r.choice(CUES[lang][typ]) + before, "CTX"), (value, typ),
                                   (after, "CTX"), (seg[k:], None)]  # fmt: skip
    text, gold = "", []
    for s in sentences:
        first = next(t for t, _ in s if t)
        if text and (lang == "en" or (text[-1].isascii() and first[0].isascii())):
            text += " "  # Chinese sentences join without a space unless ASCII would touch ASCII
        for t, lab in s:
            if lab not in (None, "CTX", "NEG"):
                gold.append((len(text), len(text) + len(t), lab))
            text += t
    return text, gold


def plant_pii(
    docs: Iterable[tuple[str, Sequence[str]] | str | dict], *, lang: str, n: int, seed: int = 0, split: str = "dev"
) -> list[PiiItem]:
    """``n`` labelled items: passages of 1-3 consecutive carrier sentences with values and look-alikes planted.

    ``docs`` are texts, ``{"id", "text"}`` dicts or ``(doc_id, sentences)`` pairs in language ``lang``;
    ``split`` picks the value pool, sentence templates and formats (``"test"`` adds the held-out ones).
    """
    if split not in SPLITS or lang not in LANGS or n < 1:
        raise ValueError(f"need split in {SPLITS}, lang in {LANGS}, n >= 1; got {split!r}, {lang!r}, {n}")
    carriers = []
    for k, d in enumerate(docs):
        if isinstance(d, tuple):
            carriers.append((d[0], tuple(d[1])))
        else:
            text, doc_id = (d["text"], d.get("id", str(k))) if isinstance(d, dict) else (d, str(k))
            carriers.append((doc_id, tuple(carrier_sentences(text, lang))))
    carriers = [c for c in carriers if c[1]]
    if not carriers:
        raise ValueError("docs hold no usable carrier sentence (see carrier_sentences)")
    r = random.Random(f"pii-{split}-{lang}-{seed}")  # str seeds are hashed with SHA-512: stable across runs
    items = []
    for _ in range(n):
        doc_id, sents = r.choice(carriers)
        m = r.randint(1, min(3, len(sents)))
        start = r.randrange(len(sents) - m + 1)
        text, gold = _plant(r, sents[start : start + m], lang, split, r.randint(1, 3), r.randint(0, 3))
        items.append(PiiItem(text=text, lang=lang, spans=tuple(sorted(gold)), source=doc_id))
    return items


def build_pii_benchmark(split: str, n: int = 600, seed: int = 0, langs: Sequence[str] = LANGS) -> list[PiiItem]:
    """``n`` items per language planted in the split's bundled carriers (:data:`CARRIER_SOURCES`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [
        it for lang in langs for it in plant_pii(bundled_carriers(split, lang), lang=lang, n=n, seed=seed, split=split)
    ]


def score_by_language(
    items: Iterable[PiiItem], detector: Callable[[str], list[Span]] = find_pii
) -> dict[str, dict[str, dict[str, float]]]:
    """``{lang: {type: {precision, recall, f1, tp, fp, fn, partial}}}`` (exact span match, see ``evaluate_pii``)."""
    by_lang: dict[str, list[PiiItem]] = {}
    for it in items:
        by_lang.setdefault(it.lang, []).append(it)
    return {lang: evaluate_pii(its, detector) for lang, its in sorted(by_lang.items())}


def score_rows(items: Iterable[PiiItem], detector: Callable[[str], list[Span]] = find_pii) -> list[dict]:
    """The same scores as flat rows ``{lang, type, precision, recall, f1, tp, fp, fn, partial}`` for a table."""
    scores = score_by_language(items, detector)
    return [{"lang": lang, "type": t, **m} for lang, res in scores.items() for t, m in res.items()]
