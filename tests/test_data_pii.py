"""PII detection: validators, national/international formats, CJK boundaries, hard negatives, masking, and the
>= 0.95 precision/recall goal per type and language on the held-out TEST split of the real-text benchmark."""

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.data.corpora import load_documents
from llmbook.data.pii import (
    CS336_PLACEHOLDERS,
    MASK_RE,
    PHONE_FORMATS,
    PII_TYPES,
    card_brand,
    card_ok,
    cn_id_check_char,
    cn_id_ok,
    evaluate_pii,
    find_pii,
    luhn_complete,
    luhn_ok,
    make_pii_benchmark,
    mask_pii,
    phone_ok,
    pii_stage,
)
from llmbook.data.pii_benchmark import (
    CARRIER_SOURCES,
    PiiItem,
    build_pii_benchmark,
    formats,
    plant_pii,
    score_by_language,
    score_rows,
)

R = random.Random(0)
MC_2X = luhn_complete("2221", 16, R), luhn_complete("2720", 16, R)  # the Mastercard 2-series ends


def _found(text: str) -> list[tuple[str, str]]:
    return [(s.type, s.value) for s in find_pii(text)]


def test_validators():
    assert luhn_ok("4539578763621486") and not luhn_ok("4539578763621487")
    assert card_ok("4539 5787 6362 1486") and not card_ok("1234 5678 9012 3456")
    assert cn_id_ok("11010519491231002X") and not cn_id_ok("110105194912310021")
    assert not cn_id_ok("110105194913310020")  # month 13
    assert phone_ok("+1 415 555 0132") and not phone_ok("+1 115 555 0132")  # NANP area codes start with 2-9
    assert phone_ok("+44 (0)20 7946 0958") and not phone_ok("+44 20 7946")  # UK numbers have 9-10 digits


@pytest.mark.parametrize(
    "prefix,length,brand",
    [("4", 16, "Visa"), ("4", 13, "Visa"), ("4", 19, "Visa"), ("51", 16, "Mastercard"), ("55", 16, "Mastercard"),
     ("2221", 16, "Mastercard"), ("2720", 16, "Mastercard"), ("34", 15, "American Express"),
     ("37", 15, "American Express"), ("6011", 16, "Discover"), ("644", 16, "Discover"), ("649", 19, "Discover"),
     ("65", 16, "Discover"), ("3528", 16, "JCB"), ("3589", 19, "JCB"), ("62", 16, "UnionPay"), ("62", 19, "UnionPay"),
     ("36", 14, "Diners Club"), ("300", 14, "Diners Club"), ("305", 14, "Diners Club"), ("38", 16, "Diners Club"),
     ("6759", 16, "Maestro"), ("5018", 19, "Maestro"), ("2200", 16, "Mir"),
     ("2721", 16, None), ("3590", 16, None), ("51", 15, None), ("37", 16, None), ("1", 16, None)],
)  # fmt: skip
def test_card_brands_and_lengths(prefix, length, brand):
    digits = luhn_complete(prefix, length, random.Random(length))
    assert card_brand(digits) == brand
    assert card_ok(digits) == (brand is not None)
    assert not card_ok(digits[:-1] + str((int(digits[-1]) + 1) % 10))  # one digit off fails Luhn


# The misses and false positives an outside held-out set of real English and Chinese text found in the old detector.
@pytest.mark.parametrize(
    "text,expected",
    [
        ("Call (415) 555-0132 today.", [("PHONE", "(415) 555-0132")]),
        ("Call 415-555-0132 today.", [("PHONE", "415-555-0132")]),
        ("Call 415.555.0132 today.", [("PHONE", "415.555.0132")]),
        ("北京办公室010-12345678，", [("PHONE", "010-12345678")]),
        ("深圳电话(0755) 8888 6666。", [("PHONE", "(0755) 8888 6666")]),
        ("请联系li.wei@163.com", [("EMAIL", "li.wei@163.com")]),
        ("电话+86 138 0013 8000", [("PHONE", "+86 138 0013 8000")]),
        (f"Card {MC_2X[0]} and {MC_2X[1][:4]} {MC_2X[1][4:8]} {MC_2X[1][8:12]} {MC_2X[1][12:]}.",
         [("CARD", MC_2X[0]), ("CARD", f"{MC_2X[1][:4]} {MC_2X[1][4:8]} {MC_2X[1][8:12]} {MC_2X[1][12:]}")]),
        ("mapped ::ffff:192.0.2.1 here", [("IPV6", "::ffff:192.0.2.1")]),
        ("The server is 10.0.0.1.", [("IPV4", "10.0.0.1")]),
        ("Use icon@2x.png for retina screens.", []),
    ],
)  # fmt: skip
def test_outside_set_misses(text, expected):
    assert _found(text) == expected


@pytest.mark.parametrize(
    "text,typ",
    [
        ("mail li.wei@example.com now", "EMAIL"),
        ("call 13812345678.", "PHONE"),
        ("call +86 138 1234 5678", "PHONE"),
        ("tel +1 415-555-0132", "PHONE"),
        ("from 192.168.1.20 today", "IPV4"),
        ("host 2001:db8::8a2e:370:7334 ok", "IPV6"),
        ("card 4539-5787-6362-1486 ok", "CARD"),
        ("身份证 11010519491231002X 号", "ID_CN"),
        ("身份证号11010519491231002x。", "ID_CN"),
        ("ID 110105 19491231 002X on file", "ID_CN"),
        ("write to First.Last+tag@Mail.Example.CO.UK, please", "EMAIL"),
        ("邮箱12345678@qq.com。", "EMAIL"),
    ],
)
def test_positive(text, typ):
    assert [s.type for s in find_pii(text)] == [typ]


@pytest.mark.parametrize(
    "number",
    ["(415) 555-0132", "415-555-0132", "415.555.0132", "415 555 0132", "1-800-555-0199", "+1 (415) 555-0132",
     "+1-415-555-0132", "+14155550132", "13800138000", "138 0013 8000", "138-0013-8000", "+86 138 0013 8000",
     "0086 138 0013 8000", "010-12345678", "(0755) 8888 6666", "0755-88886666", "+86 10 1234 5678",
     "020 7946 0958", "07700 900123", "0161 496 0000", "+44 20 7946 0958", "+44 (0)20 7946 0958",
     "030 12345678", "0151 23456789", "089/1234567", "+49 30 12345678", "+49 (0)30 12345678",
     "01 23 45 67 89", "06.12.34.56.78", "+33 1 23 45 67 89", "+33 (0)6 12 34 56 78",
     "03-1234-5678", "090-1234-5678", "+81 3-1234-5678", "+81 90 1234 5678",
     "+91 98765 43210", "098765 43210", "+91-98765-43210", "+919876543210"],
)  # fmt: skip
def test_phone_formats_in_english_and_chinese(number):
    for text in (f"Please call {number} before noon.", f"请拨打{number}咨询。", f"Tel: {number}"):
        assert _found(text) == [("PHONE", number)], text


def test_phone_format_table_examples():
    for f in PHONE_FORMATS:
        assert _found(f"call {f.example} now") == [("PHONE", f.example)], f.region


@pytest.mark.parametrize(
    "text,value",
    [("Listen [2001:db8::1]:8080 now", "2001:db8::1"),
     ("link fe80::1ff:fe23:4567:890a%eth0 up", "fe80::1ff:fe23:4567:890a%eth0"),
     ("full 2001:0DB8:0000:0000:0000:FF00:0042:8329.", "2001:0DB8:0000:0000:0000:FF00:0042:8329"),
     ("loopback ::1 only", "::1"), ("地址::ffff:10.0.0.1已封禁", "::ffff:10.0.0.1")],
)  # fmt: skip
def test_ipv6_forms(text, value):
    assert _found(text) == [("IPV6", value)]


@pytest.mark.parametrize(
    "text",
    ["Python 3.11.2", "on 2024-03-15 12:30:45", "ISBN 978-0-306-40615-7", "ip 256.1.1.300", "id 110105194912310021",
     "card 4539 5787 6362 1487", "Version 1.2.3.4000", "order ORD-20240315-77812",
     # file names with @, package specs, versions, OIDs
     "icon@2x.png", "logo@3x.jpg and banner@1.5x.webp", "pip install requests@2.31.0", "npm i @types/node@20.4.1",
     "release 1.2.3.4.5", "version 4.2.1.7", "v2.0.0-rc.1", "build 10.0.19045.3803", "OID 1.3.6.1.4.1.311.21.7",
     "user@1000.service", "4.8.1.2. Virtual environments",
     # dates, times, ISBNs, hashes, constants, prices, coordinates, order numbers, MACs, slices
     "2024.01.15, 15/01/2024, 01.15.2024, 2024年1月15日", "at 09:30:15.123", "ISBN 0-306-40615-2",
     "550e8400-e29b-41d4-a716-446655440000", "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
     "max 2147483647, 18446744073709551615, 9007199254740993, 6.02214076e23", "range -2147483648 to +2147483647",
     "$1,299.99 or € 1 234,56 or ¥12,888", "(40.7128, -74.0060) and 39.9042° N, 116.4074° E",
     "Order #2024-0115-7781", "订单号20240115123456", "MAC 00:1A:2B:3C:4D:5E", "y = m[::2]", "Room 301, ext. 4821",
     "Tracking 4235 0700 6388 9120.", "ref 4981 0063 3185 5305"],
)  # fmt: skip
def test_hard_negatives(text):
    assert find_pii(text) == [], find_pii(text)


def test_bad_checksums_are_not_detected():
    r = random.Random(3)
    for _ in range(50):
        card = luhn_complete("4", 16, r)
        bad = card[:15] + str((int(card[15]) + 5) % 10)
        assert find_pii(f"card {card} ok")[0].value == card and find_pii(f"card {bad} ok") == []
    first = "11010519491231002"
    wrong = next(c for c in "0123456789X" if c != cn_id_check_char(first))
    assert find_pii(f"身份证{first}{wrong}。") == []


def test_mask_counts_and_placeholders():
    text = "a li@x.org b 10.0.0.1 c 13812345678 d 2001:db8::1"
    masked, counts = mask_pii(text)
    assert masked == "a <EMAIL> b <IPV4> c <PHONE> d <IPV6>"
    assert counts == {"EMAIL": 1, "IPV4": 1, "PHONE": 1, "IPV6": 1}
    assert [m.group(1) for m in MASK_RE.finditer(masked)] == ["EMAIL", "IPV4", "PHONE", "IPV6"]
    masked, _ = mask_pii(text, placeholders=CS336_PLACEHOLDERS)
    assert masked == "a |||EMAIL_ADDRESS||| b |||IP_ADDRESS||| c |||PHONE_NUMBER||| d |||IP_ADDRESS|||"
    masked, counts = mask_pii(text, types=["EMAIL", "PHONE"], placeholders={"EMAIL": "[mail]"})
    assert masked == "a [mail] b 10.0.0.1 c <PHONE> d 2001:db8::1" and counts == {"EMAIL": 1, "PHONE": 1}
    assert mask_pii(text, types="IPV4")[0] == "a li@x.org b <IPV4> c 13812345678 d 2001:db8::1"


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"types must be a subset of .*'SSN'"):
        find_pii("x", types=["EMAIL", "SSN"])
    with pytest.raises(ValueError, match=r"placeholders must map types among .*'MAIL'"):
        mask_pii("x", placeholders={"MAIL": "<M>"})
    with pytest.raises(ValueError, match="text must be a str"):
        find_pii(b"a@b.com")


def test_pii_stage_placeholders_and_drop():
    stage = pii_stage(placeholders=CS336_PLACEHOLDERS)
    text = "Write to ada@example.org about the whale ship and its long voyage."
    doc = stage.fn({"id": "a", "text": text, "meta": {}})
    assert doc["text"].startswith("Write to |||EMAIL_ADDRESS||| about") and doc["meta"]["pii"] == {"EMAIL": 1}
    assert stage.fn({"id": "b", "text": "a@b.com 13812345678 192.168.0.1"}) == "mostly_pii"


_ALPHABET = st.sampled_from([*"0123456789abcdefABCDEFxX@.:-+()[]%/ \n，。电话邮箱", "com", "::", "+86 ", "192.168."])


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=60).map("".join))
def test_find_pii_fuzz(text):
    spans = find_pii(text)
    assert all(0 <= s.start < s.end <= len(text) and text[s.start : s.end] == s.value for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))  # sorted, non-overlapping
    assert all(s.type in PII_TYPES for s in spans)
    masked, counts = mask_pii(text)
    assert sum(counts.values()) == len(spans) and len(MASK_RE.findall(masked)) >= len(spans)
    assert mask_pii(masked)[0] == masked  # masking a masked text changes nothing


# --- the real-text benchmark -------------------------------------------------------------------
@pytest.fixture(scope="module")
def test_split() -> list[PiiItem]:
    return build_pii_benchmark("test", n=600, seed=0)


@pytest.fixture(scope="module")
def dev_split() -> list[PiiItem]:
    return build_pii_benchmark("dev", n=300, seed=0)


def test_benchmark_goal_on_test_split(test_split):
    res = score_by_language(test_split)
    assert sorted(res) == ["en", "zh"]
    for lang, per_type in res.items():
        for t in PII_TYPES:
            m = per_type[t]
            assert m["tp"] + m["fn"] >= 150, (lang, t, m)  # enough gold items for a 0.95 bar to mean something
            assert m["precision"] >= 0.95 and m["recall"] >= 0.95, (lang, t, m)
    rows = score_rows(test_split)
    assert len(rows) == 12 and {r["lang"] for r in rows} == {"en", "zh"}


def test_benchmark_can_fail(test_split):
    # a detector blind to values glued to a CJK character (the old \w boundary) misses many Chinese items
    def no_cjk_left(text):
        return [s for s in find_pii(text) if not (s.start and "\u4e00" <= text[s.start - 1] <= "\u9fff")]

    zh = score_by_language(test_split, no_cjk_left)["zh"]
    assert min(m["recall"] for m in zh.values()) < 0.8, zh
    assert score_by_language(test_split, lambda s: find_pii(s, ["EMAIL"]))["en"]["CARD"]["recall"] == 0.0
    # spans cut one character short are boundary errors: no exact match, all counted as partial overlaps
    short = score_by_language(test_split, lambda s: [type(x)(type=x.type, start=x.start, end=x.end - 1, value="")
                                                     for x in find_pii(s)])  # fmt: skip
    assert short["en"]["EMAIL"]["tp"] == 0 and short["en"]["EMAIL"]["partial"] == short["en"]["EMAIL"]["fn"]


def test_benchmark_items_are_well_formed(test_split, dev_split):
    for it in test_split + dev_split:
        assert it.lang in ("en", "zh") and it.spans
        assert all(a[1] <= b[0] for a, b in zip(it.spans, it.spans[1:]))
        for start, end, typ in it.spans:
            value = it.text[start:end]
            assert typ in PII_TYPES and value == value.strip() and value
    zh = [it for it in test_split if it.lang == "zh"]
    glued = sum(bool(re.search(r"[\u4e00-\u9fff]$", it.text[: s[0]])) for it in zh for s in it.spans)
    assert glued > 200  # values written directly after a CJK character


def test_dev_and_test_share_no_source_value_or_format(test_split, dev_split):
    assert not {it.source for it in dev_split} & {it.source for it in test_split}
    assert not set(CARRIER_SOURCES["dev", "en"]) & set(CARRIER_SOURCES["test", "en"])
    values = {split: {it.text[s:e] for it in items for s, e, _ in it.spans}
              for split, items in (("dev", dev_split), ("test", test_split))}  # fmt: skip
    assert not values["dev"] & values["test"]
    held_out = [r"^\d{3}\.\d{3}\.\d{4}$", r"%", r"\(0\)", r"^\d{4}-\d{6}-\d{5}$", r"x$"]  # test-only formats
    for pat in held_out:
        assert not any(re.search(pat, v) for v in values["dev"]), pat
        assert any(re.search(pat, v) for v in values["test"]), pat
    assert all(any(held for _, held, _ in formats(t)) for t in PII_TYPES)


def test_plant_pii_on_user_text_and_bad_input():
    docs = ["The harbour was quiet that morning. Nobody came to the office, and the clerk went home early.",
            {"id": "d2", "text": "Letters arrived on Tuesday, all of them unopened. The captain did not care."}]
    items = plant_pii(docs, lang="en", n=40, seed=5, split="test")
    assert len(items) == 40 and {it.source for it in items} <= {"0", "d2"}
    assert all(m["recall"] >= 0.9 for m in evaluate_pii(items).values())
    with pytest.raises(ValueError, match="split must be one of"):
        build_pii_benchmark("train")
    with pytest.raises(ValueError, match="lang in"):
        plant_pii(docs, lang="fr", n=3)
    with pytest.raises(ValueError, match="no usable carrier"):
        plant_pii(["short"], lang="en", n=3)


def test_legacy_synthetic_benchmark_goal():
    bench = make_pii_benchmark(load_documents(limit=300), n=1500, seed=1)
    res = evaluate_pii(bench)
    for t in PII_TYPES:
        assert res[t]["tp"] > 100, (t, res[t])
        assert res[t]["precision"] >= 0.95 and res[t]["recall"] >= 0.95, (t, res[t])
    worse = evaluate_pii(bench, lambda s: find_pii(s, [t for t in PII_TYPES if t != "CARD"]))
    assert worse["CARD"]["recall"] == 0.0
    assert evaluate_pii([("x 10.0.0.1", [(2, 10, "IPV4")])])["IPV4"]["tp"] == 1  # (start, end, type) gold works
