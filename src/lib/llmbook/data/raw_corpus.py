"""A synthetic "raw crawl": bundled clean documents plus planted dirt, every item labelled.

Real pretraining data starts as web pages: menus, cookie banners, spam, binary junk, copies
of the same article, personal data. The bundled corpora are clean books and poems, so to give
every pipeline stage something to remove this module plants realistic dirt into them,
deterministically by seed, and labels each document with ``meta["dirt"]`` (what was planted)
and ``meta["cluster"]`` (the clean document it copies, for duplicate ground truth). Kinds:

=================  ============================================================  ==================
kind               what it is                                                    removed by
=================  ============================================================  ==================
``clean``          a bundled chapter, or several Chinese poems joined             kept
``boilerplate``    clean text with cookie/nav/copyright lines around it          normalize, lines
``pii``            clean text with 1-3 e-mails/phones/cards/IPs/IDs inserted     masked (pii)
``contact_list``   a page that is mostly personal data                           pii (dropped)
``near_dup``       an edited copy (:func:`~llmbook.data.dedup.plant_near_duplicates`)  near dedup
``exact_dup``      a verbatim copy with case/whitespace changes                  exact dedup
``binary``         random bytes                                                  normalize
``code``           Python standard-library source                                language id
``short``          one sentence                                                  quality rules
``menu``           a page of bullet-point links                                  quality rules
``spam``           one advertising line repeated                                 quality rules
``word_salad``     words drawn at random from the corpus' own unigram counts     quality classifier
``toxic``          clean text with list words inserted                           word list
=================  ============================================================  ==================

The classifier and language-ID training sets come from :func:`junk_documents` and
:func:`code_snippets` with a *different* seed, so nothing planted here is seen in training.
"""

from __future__ import annotations

import importlib
import inspect
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from llmbook.data.corpora import load_documents
from llmbook.data.dedup import plant_near_duplicates
from llmbook.data.minhash import words
from llmbook.data.pii import random_pii_sentence
from llmbook.data.pipeline import Doc

JUNK_KINDS = ("binary", "code", "short", "menu", "spam", "word_salad", "toxic", "contact_list")
DIRT_KINDS = ("clean", "boilerplate", "pii", "near_dup", "exact_dup", *JUNK_KINDS)

# Standard-library modules whose source stands in for "code pages" (stable within a Python version).
CODE_MODULES = (
    "json.decoder", "json.encoder", "textwrap", "argparse", "csv", "difflib", "heapq", "bisect",
    "calendar", "fractions", "statistics", "string", "shlex", "glob", "fnmatch", "base64",
    "configparser", "dataclasses", "enum", "functools", "ipaddress", "pprint", "queue", "random",
)
BOILER_HEAD = (
    "Skip to main content",
    "We use cookies to improve your experience. Cookie settings",
    "Home | Books | Authors | Reading lists | Contact",
    "Subscribe to our newsletter for weekly picks",
)
BOILER_FOOT = (
    "Copyright 2024 Example Media. All rights reserved.",
    "Privacy policy | Terms of use",
    "Share on Facebook | Share on Twitter",
    "Home | Books | Authors | Reading lists | Contact",
)
_SPAM = (
    "Buy cheap watches online best price free shipping order now",
    "Best casino bonus click to win big jackpot today",
    "Cheap flights hotels deals lowest price guaranteed book today",
    "便宜手表 在线购买 最低价格 免费送货 立即下单",
)
_MENU = ("Home", "About us", "Products", "Services", "Blog", "Careers", "Contact", "Login", "Sitemap", "FAQ",
         "首页", "关于我们", "产品中心", "新闻动态", "联系我们")
_TOXIC = ("fuck", "shit", "bitch", "asshole", "porn", "xxx", "色情", "傻逼")
_SHORT = ("Click the link below.", "Page not found.", "Loading...", "No results.", "页面不存在。")


@dataclass(kw_only=True)
class RawCorpusConfig:
    """How much of each kind of dirt to plant; rates are fractions of the clean document count."""

    en_docs: int = 200  # English chapters drawn (seeded) from the bundled novels
    zh_docs: int = 200  # Chinese documents, each several consecutive poems or a classic's chapter
    zh_min_chars: int = 300  # poems are joined until a document has at least this many characters
    reference_frac: float = 0.2  # share of clean documents held out as reference text (never in the raw crawl)
    near_dup_rate: float = 0.15  # edited copies planted
    exact_dup_rate: float = 0.05  # verbatim copies planted
    pii_rate: float = 0.2  # clean documents that get personal data inserted
    boilerplate_rate: float = 0.3  # clean documents wrapped in web-page furniture
    junk_rate: float = 0.03  # documents of *each* junk kind (JUNK_KINDS)
    seed: int = 0  # drives every random choice

    def __post_init__(self) -> None:
        if self.en_docs < 1 or self.zh_docs < 0:
            raise ValueError(f"en_docs must be >= 1 and zh_docs >= 0, got {self.en_docs}, {self.zh_docs}")
        if not 0.0 <= self.reference_frac < 0.9:
            raise ValueError(f"reference_frac must be in [0, 0.9), got {self.reference_frac}")
        for name in ("near_dup_rate", "exact_dup_rate", "pii_rate", "boilerplate_rate", "junk_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(kw_only=True)
class RawCorpus:
    """The planted crawl plus the clean reference documents kept out of it."""

    docs: list[Doc]  # the raw crawl, shuffled; meta: dirt, cluster, source, lang (+ pii_values)
    reference: list[Doc]  # clean documents never planted (classifier positives, held-out text)

    def counts(self) -> Counter:
        """Documents per dirt kind."""
        return Counter(d["meta"]["dirt"] for d in self.docs)


def clean_documents(en_docs: int, zh_docs: int, zh_min_chars: int = 300, seed: int = 0) -> list[Doc]:
    """Seeded sample of bundled English chapters plus Chinese documents of >= ``zh_min_chars`` characters.

    Short poems are joined in file order (a poem alone fails any length rule); each document
    keeps ``meta["source"]`` = its corpus name and ``meta["lang"]``.
    """
    r = random.Random(seed)
    en = [
        {**d, "meta": {**d["meta"], "source": name}}
        for name in ("austen", "moby_dick")
        for d in load_documents(name)
        if len(words(d["text"])) >= 100
    ]
    en = r.sample(en, min(en_docs, len(en)))
    zh: list[Doc] = []
    for name in ("chinese_classics", "tang_song_poetry"):
        buf: list[str] = []
        for d in load_documents(name):
            buf.append(d["text"])
            if sum(map(len, buf)) >= zh_min_chars:
                meta = {"source": name, "lang": "zh"}
                zh.append({"id": f"{d['id']}+{len(buf)}", "text": "\n".join(buf), "meta": meta})
                buf = []
    zh = r.sample(zh, min(zh_docs, len(zh)))
    return [
        {"id": d["id"], "text": d["text"], "meta": {"source": d["meta"]["source"], "lang": d["meta"].get("lang", "en")}}
        for d in en + zh
    ]


def code_snippets(n: int, chars: int = 3000, seed: int = 0) -> list[str]:
    """``n`` windows of ``chars`` characters of standard-library Python source (seeded)."""
    r = random.Random(seed)
    sources = [inspect.getsource(importlib.import_module(m)) for m in CODE_MODULES]
    out = []
    for _ in range(n):
        src = r.choice(sources)
        a = r.randrange(max(len(src) - chars, 1))
        out.append(src[a : a + chars])
    return out


def _word_salad(vocab: list[str], weights: list[int], zh: bool, r: random.Random) -> str:
    k = r.randint(150, 400)
    toks = r.choices(vocab, weights, k=k)
    sep = "" if zh else " "
    lines = [sep.join(toks[i : i + 12]) + ("。" if zh else ".") for i in range(0, k, 12)]
    return "\n".join(lines)


def junk_documents(kind: str, n: int, pool: list[Doc], seed: int = 0) -> list[str]:
    """``n`` texts of junk ``kind`` (one of :data:`JUNK_KINDS` minus ``toxic``) built from ``pool``'s vocabulary."""
    r = random.Random(f"{kind}-{seed}")
    if kind == "binary":
        return [bytes(r.randrange(256) for _ in range(r.randint(500, 3000))) for _ in range(n)]  # type: ignore[misc]
    if kind == "code":
        return code_snippets(n, seed=seed)
    if kind == "short":
        return [r.choice(_SHORT) for _ in range(n)]
    if kind == "menu":
        return ["\n".join(f"- {r.choice(_MENU)}" for _ in range(r.randint(10, 30))) for _ in range(n)]
    if kind == "spam":
        return ["\n".join([r.choice(_SPAM)] * r.randint(10, 40)) for _ in range(n)]
    if kind == "contact_list":
        types = ("EMAIL", "PHONE")  # one line per contact: an email and a phone number
        return [
            "\n".join(" ".join(random_pii_sentence(r, t)[2] for t in types) for _ in range(r.randint(5, 20)))
            for _ in range(n)
        ]
    if kind == "word_salad":
        out = []
        for lang in ("en", "zh"):
            toks = Counter(w for d in pool if d["meta"].get("lang") == lang for w in words(d["text"]) if w.isalnum())
            if toks:
                vocab, weights = zip(*toks.most_common(5000))
                out.append((list(vocab), list(weights), lang == "zh"))
        if not out:
            raise ValueError("pool must contain documents to draw a word-salad vocabulary from")
        return [_word_salad(*out[i % len(out)], r) for i in range(n)]
    raise ValueError(f"kind must be one of {[k for k in JUNK_KINDS if k != 'toxic']}, got {kind!r}")


def _insert_lines(text: str, new: Iterable[str], r: random.Random) -> str:
    lines = text.split("\n")
    for item in new:
        lines.insert(r.randint(0, len(lines)), item)
    return "\n".join(lines)


def _insert_pii(text: str, r: random.Random) -> tuple[str, list[str]]:
    items = [random_pii_sentence(r) for _ in range(r.randint(1, 3))]
    return _insert_lines(text, [s for s, _, _ in items], r), [v for _, _, v in items]


def make_raw_corpus(cfg: RawCorpusConfig | None = None) -> RawCorpus:
    """Clean documents, split into reference and crawl, then the crawl planted with every kind of dirt."""
    cfg = cfg or RawCorpusConfig()
    r = random.Random(cfg.seed)
    clean = clean_documents(cfg.en_docs, cfg.zh_docs, cfg.zh_min_chars, cfg.seed)
    r.shuffle(clean)
    n_ref = round(cfg.reference_frac * len(clean))
    reference, crawl = clean[:n_ref], clean[n_ref:]
    docs: list[Doc] = []
    for i, d in enumerate(crawl):
        meta = {**d["meta"], "dirt": "clean", "cluster": i}
        text = d["text"]
        u = r.random()
        if u < cfg.pii_rate:
            text, values = _insert_pii(text, r)
            meta.update(dirt="pii", pii_values=values)
        elif u < cfg.pii_rate + cfg.boilerplate_rate:
            head = r.sample(BOILER_HEAD, r.randint(1, 3))
            foot = r.sample(BOILER_FOOT, r.randint(1, 3))
            text = "\n".join([*head, text, *foot])
            meta["dirt"] = "boilerplate"
        docs.append({"id": d["id"], "text": text, "meta": meta})
    n = len(crawl)
    originals = [{"id": d["id"], "text": d["text"], "meta": {**d["meta"], "cluster": i}} for i, d in enumerate(crawl)]
    planted, cids = plant_near_duplicates(originals, cfg.near_dup_rate, seed=cfg.seed)
    for d, c in zip(planted, cids):
        if "dup_of" in d["meta"]:
            meta = {k: v for k, v in d["meta"].items() if k != "dup_of"}
            docs.append({"id": d["id"], "text": d["text"], "meta": {**meta, "dirt": "near_dup", "cluster": c}})
    for k in range(round(cfg.exact_dup_rate * n)):
        c = r.randrange(n)
        text = crawl[c]["text"]
        text = text.upper() if r.random() < 0.3 else text.replace("\n", "\n\n").replace(" ", "  ")
        meta = {**crawl[c]["meta"], "dirt": "exact_dup", "cluster": c}
        docs.append({"id": f"{crawl[c]['id']}#copy{k}", "text": text, "meta": meta})
    n_junk = max(1, round(cfg.junk_rate * n)) if cfg.junk_rate > 0 else 0
    cluster = n
    for kind in JUNK_KINDS:
        if kind == "toxic":
            texts = [_insert_lines(crawl[r.randrange(n)]["text"], r.sample(_TOXIC, 2), r) for _ in range(n_junk)]
        else:
            texts = junk_documents(kind, n_junk, crawl, seed=cfg.seed)
        for j, text in enumerate(texts):
            lang = "zh" if isinstance(text, str) and any("\u4e00" <= ch <= "\u9fff" for ch in text[:200]) else "en"
            meta = {"source": "web", "lang": lang, "dirt": kind, "cluster": cluster}
            docs.append({"id": f"{kind}-{j}", "text": text, "meta": meta})
            cluster += 1
    r.shuffle(docs)
    return RawCorpus(docs=docs, reference=reference)
