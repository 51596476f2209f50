"""Rebuild data/langid.jsonl.gz, the language-ID evaluation set, from Debian packages (run by hand, not by tests).

    .venv/bin/python data/build_langid.py      # needs apt-get, dpkg-deb, man (groff) and col on PATH

Source: the manual pages of Debian bookworm, English and 14 translations (nothing is installed, the .debs
are downloaded and unpacked in a temporary directory):

    en  manpages 6.03-2            (Linux man-pages project; licences per page: GPL-2+, BSD, "Linux-man-pages-copyleft")
    zh  manpages-zh 1.6.4.0-1      (zh_CN pages only, Simplified; GFDL-1.2+ / GPL-2+ per page)
    ja  manpages-ja 0.5.0.0.20221215+dfsg-1   (JM Project; the licence of each original page)
    de fr es it nl pl cs ru uk fi sv, pt (manpages-pt-br)  manpages-l10n 4.18.1-1 (translations GPL-3+)

Codes are ISO 639-1; "pt" is Brazilian Portuguese. Each page is rendered to text with
``MANWIDTH=3000 man -l PAGE | col -bx`` and cut into prose sentences:

  * dropped: the header/footer lines, headings (no lowercase letter), option and synopsis lines (starting
    with "-" or "[" or the page's own command name), the NAME line ("ls - list directory contents");
  * a paragraph's wrapped lines are joined (no space between CJK characters), then split into sentences after
    . ! ? (followed by a space) and after 。！？;
  * a sentence is kept when it is prose: 25-300 characters (8-200 for zh/ja), at most 15% code-like tokens
    (options, paths, ``name(2)`` references, identifiers with _ = { } < > $ ...), letters in the page's script
    (Latin >= 90% of the letters for Latin-script languages, Cyrillic >= 80% for ru/uk, CJK >= 40% of the
    non-space characters for zh/ja, and kana for ja), and, for a translation, fewer English stop words than
    stop words of its own language (translations leave untranslated English paragraphs behind);
  * exact duplicate sentences are kept once per language (the translators' credits repeat on every page).

Split BY SOURCE PAGE: the page's section/name (e.g. ``man1/ls.1``, shared by all of its translations) is
hashed (md5) into train 60% / dev 20% / test 20%, so no page, in any language, has sentences in two splits.
Per language and page at most ``PER_PAGE`` sentences (a seeded sample), then at most ``CAP`` per split.

Writes data/langid.jsonl.gz, one sentence per line:
    {"id": "de:man1/ls.1:003", "lang": "de", "text": "...", "doc": "man1/ls.1", "split": "train"|"dev"|"test"}
Deterministic: same packages, same bytes (sorted pages, seeded sampling, gzip mtime 0).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_corpora import fetch_deb  # noqa: E402  (same download helper as the corpora)

DATA = Path(__file__).resolve().parent
OUT = DATA / "langid.jsonl.gz"

# lang -> (Debian package, man directory inside the package)
SOURCES = {
    "en": ("manpages", "usr/share/man"),
    "zh": ("manpages-zh", "usr/share/man/zh_CN"),
    "ja": ("manpages-ja", "usr/share/man/ja"),
    "de": ("manpages-de", "usr/share/man/de"),
    "fr": ("manpages-fr", "usr/share/man/fr"),
    "es": ("manpages-es", "usr/share/man/es"),
    "it": ("manpages-it", "usr/share/man/it"),
    "nl": ("manpages-nl", "usr/share/man/nl"),
    "pt": ("manpages-pt-br", "usr/share/man/pt_BR"),
    "pl": ("manpages-pl", "usr/share/man/pl"),
    "cs": ("manpages-cs", "usr/share/man/cs"),
    "ru": ("manpages-ru", "usr/share/man/ru"),
    "uk": ("manpages-uk", "usr/share/man/uk"),
    "fi": ("manpages-fi", "usr/share/man/fi"),
    "sv": ("manpages-sv", "usr/share/man/sv"),
}
MAX_PAGES = 260  # pages rendered per language (in hash order, so all splits get their share); bounds build time
PER_PAGE = 40  # sentences per page and language, so a few long pages do not dominate
CAP = {"train": 1200, "dev": 250, "test": 250}  # sentences per language and split (keeps the file ~1 MB)
SEED = 0

STOP = {  # a few frequent function words per language, for the untranslated-English filter
    "en": "the of and to is in that for with are be this by it an as or not on which when".split(),
    "de": "der die das und ist nicht ein eine zu den mit von für wird werden auf dem des sie oder".split(),
    "fr": "le la les de des et est un une du en pour dans que qui sur pas par ne être".split(),
    "es": "el la los las de del y es un una en para que por con se no al como".split(),
    "it": "il la le di del della e è un una in per che non con si sono da al".split(),
    "nl": "de het een en van is dat in op voor met niet te worden wordt zijn door".split(),
    "pt": "o a os as de do da e é um uma em para que não com se por no na".split(),
    "pl": "i w na nie jest z się do że to jak dla lub przez od są być".split(),
    "cs": "a v na je se že to z do pro nebo jako by jsou při s od".split(),
    "fi": "ja on ei se että tai kun jos joka ovat myös kuin tämä".split(),
    "sv": "och är att en ett det som av för på med inte till om kan den".split(),
}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_CYR = re.compile(r"[\u0400-\u04ff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_CODE_TOKEN = re.compile(r"^[-\[(]|[_=/\\{}<>$|#@*`~]|\w\(\d\w*\)|\.\w+\(|^\d+$|^\S+\.\S+\.\S")
_SENT_SPLIT = re.compile(  # after a word (not an abbreviation like "z.B.") or a closing quote/bracket; after 。！？
    r"(?:(?<=\w[.!?])|(?<=[)\"'»”][.!?]))(?<!\.\w\.)\s+(?=[\"'«»„“(\[]?[^\s\"'a-z])|(?<=[。！？])"
)


def page_key(path: Path, man_root: Path) -> str:
    """``man1/ls.1`` for ``.../man1/ls.1.gz``: the source page, the same in every language."""
    rel = path.relative_to(man_root)
    return f"{rel.parent}/{rel.name.removesuffix('.gz')}"


def split_of(key: str) -> str:
    h = int(hashlib.md5(key.encode()).hexdigest(), 16) % 10
    return "train" if h < 6 else "dev" if h < 8 else "test"


def render(path: Path) -> str:
    env = {**os.environ, "MANWIDTH": "3000", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": "0"}
    out = subprocess.run(["man", "-l", str(path)], capture_output=True, env=env, timeout=60)
    col = subprocess.run(["col", "-bx"], input=out.stdout, capture_output=True, timeout=60)
    return col.stdout.decode("utf-8", "replace")


def _join(a: str, b: str) -> str:
    return a + b if a and _CJK.match(a[-1]) and _CJK.match(b[0]) else f"{a} {b}"


def paragraphs(text: str, command: str) -> list[str]:
    """Prose paragraphs of a rendered page: wrapped lines joined, headings/options/synopsis lines dropped."""
    lines = text.splitlines()[1:-1]  # header and footer lines
    paras, cur = [], ""
    for raw in lines:
        s = raw.strip()
        drop = (
            not s
            or raw[:1] not in (" ", "")  # headings start in column 0
            or s[0] in "-[+•·*"
            or s.split()[0] == command
            or re.match(r"^\S+(, \S+)* [-—–] ", s) is not None  # NAME line
        )
        if drop:
            if cur:
                paras.append(cur)
            cur = ""
            continue
        cur = _join(cur, s) if cur else s
    if cur:
        paras.append(cur)
    return paras


def is_prose(s: str, lang: str) -> bool:
    cjk = lang in ("zh", "ja")
    lo, hi = (8, 200) if cjk else (25, 300)
    if not lo <= len(s) <= hi or "\ufffd" in s:
        return False
    toks = s.split()
    if not cjk and len(toks) < 4:
        return False
    if sum(bool(_CODE_TOKEN.search(t)) for t in toks) > 0.15 * max(len(toks), 1) + (0.5 if cjk else 0):
        return False
    nonspace = sum(not ch.isspace() for ch in s)
    if cjk:
        if len(_CJK.findall(s)) < 0.4 * nonspace:
            return False
        return bool(_KANA.search(s)) if lang == "ja" else not _KANA.search(s)
    letters = sum(ch.isalpha() for ch in s)
    if letters < 0.6 * nonspace:
        return False
    if lang in ("ru", "uk"):
        return len(_CYR.findall(s)) >= 0.8 * letters
    if len(_LATIN.findall(s)) < 0.9 * letters:
        return False
    if lang != "en":
        words = re.findall(r"\w+", s.lower())
        if sum(w in STOP["en"] for w in words) >= max(1, sum(w in STOP[lang] for w in words)):
            return False
    return True


def sentences(text: str, lang: str, command: str) -> list[str]:
    out = []
    for p in paragraphs(text, command):
        for s in _SENT_SPLIT.split(p):
            s = re.sub(r"\s+", " ", s).strip()
            if s and is_prose(s, lang):
                out.append(s)
    return out


def build(work: Path) -> list[dict]:
    rows = []
    for lang, (pkg, sub) in SOURCES.items():
        root = fetch_deb(pkg, work) / sub
        pages = [p for p in sorted(root.glob("man*/*.gz")) if not p.is_symlink()]
        pages.sort(key=lambda p: hashlib.md5(page_key(p, root).encode()).hexdigest())
        pages = pages[:MAX_PAGES]
        with ThreadPoolExecutor(2) as ex:
            texts = list(ex.map(render, pages))
        seen: set[str] = set()
        per_split: dict[str, list[dict]] = {k: [] for k in CAP}
        for p, text in sorted(zip(pages, texts), key=lambda pt: page_key(pt[0], root)):
            key = page_key(p, root)
            command = p.name.split(".")[0]
            sents = [s for s in sentences(text, lang, command) if not (s in seen or seen.add(s))]
            rng = random.Random(f"{SEED}:{lang}:{key}")
            pick = sorted(rng.sample(range(len(sents)), min(PER_PAGE, len(sents))))
            split = split_of(key)
            for k in pick:
                per_split[split].append({"id": f"{lang}:{key}:{k:03d}", "lang": lang, "text": sents[k],
                                         "doc": key, "split": split})
        for split, items in per_split.items():
            rng = random.Random(f"{SEED}:{lang}:{split}")
            keep = sorted(rng.sample(range(len(items)), min(CAP[split], len(items))))
            rows += [items[i] for i in keep]
        counts = {s: sum(r["lang"] == lang and r["split"] == s for r in rows) for s in CAP}
        print(f"{lang}: {len(pages)} pages, {counts}", file=sys.stderr)
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = build(Path(tmp))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    OUT.write_bytes(buf.getvalue())
    print(f"wrote {OUT} ({len(rows)} sentences, {len(buf.getvalue()):,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
