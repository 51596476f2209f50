"""Pretraining-data benchmark: MinHash vs datasketch, pipeline and Spark throughput, main-text extraction vs
trafilatura/resiliparse, PII detection speed, language ID vs py3langid.

    python benchmarks/data.py [--quick] [--no-spark] [--spark-master local[2]] [--only SECTION ...]
        ->  benchmarks/results/data.json

Sections (``--only`` runs some of them; the other sections already in ``--out`` are kept, and
``section_runs`` records when and with which ``--quick`` each was measured). Each ratio is ours / reference,
> 1 meaning ours is faster, and comes from one run of its section: the two sides are timed in the same process,
round-robin (order alternating) after one warm-up call each, fastest of 3 repeats (1 with ``--quick``).

- "minhash": our vectorised MinHash vs datasketch ``MinHash.bulk`` on 20k (quick: 2k) ~2 kB windows of bundled
  en+zh text; Jaccard estimate error of both against the exact value.
- "pipeline": the chapter's stages (normalize, PII, bad words, Gopher, dedup) in-process on bundled documents.
- "spark": the chapter's whole pipeline (``clean_corpus``) in-process and on PySpark (``clean_corpus_spark``,
  same survivors), end-to-end documents/s of each (pipeline only: the raw crawl and the filter training are
  shared and not timed). Left out, with a note, when pyspark or Java is missing.
- "extraction": every extractor of ``default_extractors()`` (ours, the whole-page baseline, trafilatura,
  resiliparse, jusText; a missing package is noted) on the test split of the labelled pages
  (``load_web_pages("test")``): pages/s and MB of HTML/s over all pages, token P/R/F1 against the gold text
  (``score_extractor``, whose pass is the warm-up), and pages/s ratios ours / each other extractor.
- "pii": ``find_pii`` and ``mask_pii`` documents/s and MB/s on ~1 kB English and Chinese documents: windows of
  ``corpus_text(lang)`` with one item of the PII test benchmark (1-3 values, 0-3 look-alikes) spliced in
  ("planted") and the same windows without it ("plain", what most of a crawl is). No reference library to ratio
  against; beside the speed, micro precision/recall per language on ``build_pii_benchmark("test")``
  (``score_rows``, exact span match).
- "langid": our ``train_default_langid()`` model (``predict``, one batch call) vs py3langid restricted to the
  same 15 languages (``py3langid_identifier``, ``classify`` per string: it has no batch call) on the test
  sentences of ``load_langid_data("test")`` and on their 30-character ``short_snippets``: strings/s, macro-F1,
  ratio ours / py3langid. Training our model and loading py3langid's are timed apart, outside strings/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from datasketch import MinHash

from _results import write_results
from llmbook.data.corpora import corpus_text, load_documents
from llmbook.data.dedup import dedup_stages
from llmbook.data.extract_eval import default_extractors, load_web_pages, score_extractor
from llmbook.data.langid import (
    load_langid_data,
    macro_f1,
    per_language_scores,
    py3langid_identifier,
    short_snippets,
    train_default_langid,
)
from llmbook.data.minhash import jaccard, minhash_texts, shingles
from llmbook.data.normalize import normalize_stage
from llmbook.data.pii import find_pii, mask_pii, pii_stage
from llmbook.data.pii_benchmark import build_pii_benchmark, score_rows
from llmbook.data.pipeline import run_pipeline
from llmbook.data.quality import bad_word_stage, gopher_stage

SECTIONS = ("minhash", "pipeline", "spark", "extraction", "pii", "langid")
THIRD_PARTY_EXTRACTORS = ("trafilatura", "resiliparse", "justext")  # default_extractors() leaves out missing ones
PII_DOC_BYTES = 1000  # document size of the PII section
SNIPPET_CHARS = 30  # short strings of the langid section


def best_of(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, float]:
    """Fastest seconds of each call over ``repeats`` rounds run round-robin, order alternating (so a slow spell
    of a shared machine hits both sides), after one untimed warm-up call each when ``warmup``."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in list(fns.items())[:: 1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def synth_docs(n: int, size: int, seed: int) -> list[str]:
    """n windows of ~size chars from bundled en+zh text; doc 2m+1 is doc 2m shifted by 0..size chars
    (so pairs (2m, 2m+1) span Jaccard 0..1)."""
    r = random.Random(seed)
    src = {"en": corpus_text("en"), "zh": corpus_text("zh")}
    docs = []
    while len(docs) < n:
        lang = "en" if r.random() < 0.8 else "zh"
        s, k = src[lang], size if lang == "en" else size // 3  # ~size UTF-8 bytes either way
        a = r.randrange(len(s) - 2 * k)
        docs += [s[a : a + k], s[a + r.randrange(k) : a + r.randrange(k) + k]]
    return docs[:n]


def bench_minhash(docs: list[str], num_perm: int, scheme: str, pairs: int) -> dict:
    t0 = time.perf_counter()
    sig = minhash_texts(docs, num_perm, 1, scheme)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ms = MinHash.bulk(
        [[s.encode("utf-8") for s in shingles(d)] for d in docs], num_perm=num_perm, seed=1, scheme=scheme
    )
    t_ds = time.perf_counter() - t0
    idx = range(0, min(len(docs) - 1, 2 * pairs), 2)
    exact = np.array([jaccard(set(shingles(docs[i])), set(shingles(docs[i + 1]))) for i in idx])
    est_ours = np.array([np.mean(sig[i] == sig[i + 1]) for i in idx])
    est_ds = np.array([ms[i].jaccard(ms[i + 1]) for i in idx])
    return {
        "scheme": scheme,
        "num_perm": num_perm,
        "docs": len(docs),
        "ours_docs_per_s": len(docs) / t_ours,
        "datasketch_docs_per_s": len(docs) / t_ds,
        "speedup": t_ds / t_ours,
        "pairs": len(exact),
        "mean_exact_jaccard": float(exact.mean()),
        "ours_mae": float(np.abs(est_ours - exact).mean()),
        "datasketch_mae": float(np.abs(est_ds - exact).mean()),
    }


def bench_pipeline(n: int) -> dict:
    docs = list(load_documents(limit=n))
    stages = [normalize_stage(), pii_stage(), bad_word_stage(), gopher_stage(), *dedup_stages()]
    kept, rep = run_pipeline(docs, stages)
    return rep.as_dict()


def bench_spark(profile: str, master: str) -> dict:
    """Chapter pipeline docs/s: in-process ``run_pipeline`` vs ``run_pipeline_spark`` on ``master``."""
    import shutil

    from llmbook.book import profiles
    from llmbook.chain import corpus as chain

    try:
        from llmbook.data.spark import local_spark, require_pyspark

        require_pyspark()
    except ImportError as e:
        return {"skipped": str(e)}
    if not shutil.which("java"):
        return {"skipped": "no java on PATH"}
    cfg = profiles.resolve("pretraining_data", profile)
    ours = chain.clean_corpus(cfg)
    t0 = time.perf_counter()
    spark = local_spark(master)
    start_s = time.perf_counter() - t0
    try:
        chain.clean_corpus_spark(cfg, spark)  # warm-up: Python workers, JIT
        dist = chain.clean_corpus_spark(cfg, spark)
        parallelism = spark.sparkContext.defaultParallelism
    finally:
        spark.stop()
    same = [(d["id"], d["text"]) for d in ours.kept] == [(d["id"], d["text"]) for d in dist.kept]
    return {
        "profile": profile,
        "master": master,
        "default_parallelism": parallelism,
        "docs_in": ours.report.docs_in,
        "docs_out": ours.report.docs_out,
        "same_survivors": same,
        "in_process_docs_per_s": ours.report.docs_per_s,
        "spark_docs_per_s": dist.report.docs_per_s,
        "spark_over_in_process": dist.report.docs_per_s / ours.report.docs_per_s,
        "spark_session_start_s": start_s,
        "in_process_stage_s": {r.name: r.seconds for r in ours.report.stages},
        "spark_stage_s": {r.name: r.seconds for r in dist.report.stages},  # per-doc stages: summed over executors
    }


def bench_extraction(repeats: int) -> dict:
    """Pages/s, MB of HTML/s and token P/R/F1 of each available extractor on the test pages."""
    pages = load_web_pages("test")
    html = [p.html for p in pages]
    mb = sum(len(h.encode("utf-8")) for h in html) / 1e6
    extractors = default_extractors()
    scores = {name: score_extractor(fn, pages) for name, fn in extractors.items()}  # also the warm-up pass

    def over_all(fn: Callable[[str], str]) -> Callable[[], None]:
        return lambda: [fn(h) for h in html]

    secs = best_of({name: over_all(fn) for name, fn in extractors.items()}, repeats, warmup=False)
    rows = {name: {"pages_per_s": len(pages) / secs[name], "html_mb_per_s": mb / secs[name],
                   "precision": s.precision, "recall": s.recall, "f1": s.f1, "seconds": secs[name]}
            for name, s in scores.items()}  # fmt: skip
    missing = [name for name in THIRD_PARTY_EXTRACTORS if name not in extractors]
    return {
        "pages": len(pages),
        "html_mb": mb,
        "sources": sorted({p.source for p in pages}),
        "extractors": rows,
        "ours_over": {name: rows["ours"]["pages_per_s"] / r["pages_per_s"] for name, r in rows.items()
                      if name != "ours"},
        **({"skipped": {name: "package not installed" for name in missing}} if missing else {}),
    }


def pii_documents(lang: str, items: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` ~PII_DOC_BYTES windows of ``corpus_text(lang)``, each also with ``items[i % len(items)]`` spliced in
    at a random character: (planted, plain), the plain window the same text without the item."""
    r = random.Random(seed)
    s = corpus_text(lang)
    bytes_per_char = len(s.encode("utf-8")) / len(s)
    planted, plain = [], []
    for i in range(n):
        item = items[i % len(items)]
        k = int((PII_DOC_BYTES - len(item.encode("utf-8"))) / bytes_per_char)
        a = r.randrange(len(s) - k)
        cut = a + r.randrange(k + 1)
        sep = " " if lang == "en" else ""
        planted.append(s[a:cut] + sep + item + sep + s[cut : a + k])
        plain.append(s[a : a + int(PII_DOC_BYTES / bytes_per_char)])
    return planted, plain


def bench_pii(n: int, repeats: int) -> dict:
    """find_pii / mask_pii documents/s and MB/s per language and document kind; micro P/R on the test benchmark."""
    bench = build_pii_benchmark("test")
    speed = []
    for lang in ("en", "zh"):
        planted, plain = pii_documents(lang, [it.text for it in bench if it.lang == lang], n, seed=0)
        for kind, docs in (("planted", planted), ("plain", plain)):
            mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
            secs = best_of({"find_pii": lambda docs=docs: [find_pii(d) for d in docs],
                            "mask_pii": lambda docs=docs: [mask_pii(d) for d in docs]}, repeats)  # fmt: skip
            speed.append({
                "lang": lang, "docs": kind, "n": len(docs), "doc_bytes_mean": mb * 1e6 / len(docs),
                "spans_per_doc": sum(len(find_pii(d)) for d in docs) / len(docs),
                **{f"{fn}_docs_per_s": len(docs) / t for fn, t in secs.items()},
                **{f"{fn}_mb_per_s": mb / t for fn, t in secs.items()},
            })  # fmt: skip
    quality = {}
    for row in score_rows(bench):
        q = quality.setdefault(row["lang"], {"tp": 0, "fp": 0, "fn": 0, "items": 0})
        for k in ("tp", "fp", "fn"):
            q[k] += row[k]
    for lang, q in quality.items():
        q["items"] = sum(it.lang == lang for it in bench)
        q["micro_precision"] = q["tp"] / (q["tp"] + q["fp"]) if q["tp"] + q["fp"] else 1.0
        q["micro_recall"] = q["tp"] / (q["tp"] + q["fn"]) if q["tp"] + q["fn"] else 1.0
    return {"speed": speed, "test_benchmark": quality}


def bench_langid(repeats: int) -> dict:
    """Strings/s and macro-F1 of our model and py3langid on the test sentences and their short snippets."""
    train_default_langid.cache_clear()  # time the training itself, even if an earlier section fitted the model
    t0 = time.perf_counter()
    model = train_default_langid()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = py3langid_identifier(model.labels)
    ref_load_s = time.perf_counter() - t0  # 0 when cached by an earlier call in this process
    test = load_langid_data("test")
    gold = [r["lang"] for r in test]
    sets = {"sentences": [r["text"] for r in test]}
    sets["snippets"] = short_snippets(sets["sentences"], SNIPPET_CHARS)
    out: dict = {"languages": list(model.labels), "train_s": train_s, "py3langid_load_s": ref_load_s}
    for kind, texts in sets.items():
        pred: dict[str, list[str]] = {}

        def ours(texts=texts, pred=pred):
            pred["ours"] = model.predict(texts)

        def py3(texts=texts, pred=pred):
            pred["py3langid"] = [ref.classify(t)[0] for t in texts]

        secs = best_of({"ours": ours, "py3langid": py3}, repeats)
        rate = {name: len(texts) / t for name, t in secs.items()}
        out[kind] = {
            "n": len(texts),
            "chars_mean": sum(map(len, texts)) / len(texts),
            "strings_per_s": rate,
            "macro_f1": {name: macro_f1(per_language_scores(gold, p)) for name, p in pred.items()},
            "ours_over_py3langid": rate["ours"] / rate["py3langid"],
        }
    return out


def summary(res: dict, ran: list[str]) -> str:
    lines = []
    if "minhash" in ran:
        lines.append(json.dumps({"doc_bytes_mean": res["doc_bytes_mean"], "minhash": res["minhash"]}, indent=2))
    if "pipeline" in ran:
        pipe = res["pipeline"]
        lines.append(f"pipeline docs/s {pipe['docs_per_s']} in {pipe['docs_in']} out {pipe['docs_out']}")
    if "spark" in ran:
        sp = res["spark"]
        if "skipped" in sp:
            lines.append(f"spark section skipped: {sp['skipped']}")
        else:
            lines.append(
                f"chapter pipeline ({sp['profile']}, {sp['docs_in']} docs): "
                f"in-process {sp['in_process_docs_per_s']:.1f} docs/s, "
                f"spark {sp['master']} {sp['spark_docs_per_s']:.1f} docs/s, same survivors: {sp['same_survivors']}"
            )
    if "extraction" in ran:
        ex = res["extraction"]
        lines.append(f"extraction, {ex['pages']} test pages, {ex['html_mb']:.2f} MB of HTML:")
        for name, r in ex["extractors"].items():
            ratio = "" if name == "ours" else f"  ours/{name} {ex['ours_over'][name]:.2f}x"
            lines.append(f"  {name:12s} {r['pages_per_s']:8.1f} pages/s {r['html_mb_per_s']:6.2f} MB/s "
                         f"F1 {r['f1']:.3f} (P {r['precision']:.3f} R {r['recall']:.3f}){ratio}")
        for name, why in ex.get("skipped", {}).items():
            lines.append(f"  {name}: skipped, {why}")
    if "pii" in ran:
        lines.append("pii (documents/s, MB/s):")
        for r in res["pii"]["speed"]:
            lines.append(f"  {r['lang']} {r['docs']:7s} {r['n']} docs of {r['doc_bytes_mean']:.0f} B, "
                         f"{r['spans_per_doc']:.2f} spans/doc: find_pii {r['find_pii_docs_per_s']:.0f} docs/s "
                         f"{r['find_pii_mb_per_s']:.2f} MB/s, mask_pii {r['mask_pii_docs_per_s']:.0f} docs/s "
                         f"{r['mask_pii_mb_per_s']:.2f} MB/s")
        for lang, q in res["pii"]["test_benchmark"].items():
            lines.append(f"  test benchmark {lang} ({q['items']} items): micro P {q['micro_precision']:.3f} "
                         f"R {q['micro_recall']:.3f} (tp {q['tp']} fp {q['fp']} fn {q['fn']})")
    if "langid" in ran:
        li = res["langid"]
        lines.append(f"langid ({len(li['languages'])} languages; ours trained in {li['train_s']:.1f} s, "
                     f"py3langid loaded in {li['py3langid_load_s']:.1f} s):")
        for kind in ("sentences", "snippets"):
            r = li[kind]
            lines.append(f"  {kind:9s} n={r['n']} ({r['chars_mean']:.0f} chars): "
                         f"ours {r['strings_per_s']['ours']:.0f}/s F1 {r['macro_f1']['ours']:.3f}, "
                         f"py3langid {r['strings_per_s']['py3langid']:.0f}/s F1 {r['macro_f1']['py3langid']:.3f}, "
                         f"ours/py3langid {r['ours_over_py3langid']:.2f}x")
    lines.append(f"runtime {res['runtime_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="2k documents instead of 20k, 500 PII documents instead of 2k, 1 timing repeat instead of 3")
    ap.add_argument("--no-spark", action="store_true", help="leave out the in-process vs PySpark section")
    ap.add_argument("--spark-master", default="local[2]", help="Spark master for the PySpark section")
    ap.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                    help=f"run only this section (repeatable), one of {', '.join(SECTIONS)}; "
                         "the other sections already in --out are kept")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = ap.parse_args(argv)
    ran = [s for s in SECTIONS if (args.only is None or s in args.only) and not (s == "spark" and args.no_spark)]
    if not ran:
        ap.error("no section left to run (--only spark with --no-spark)")
    repeats = 1 if args.quick else 3
    t_start = time.perf_counter()
    out = Path(args.out)
    res = json.loads(out.read_text()) if args.only and out.exists() else {}
    res.update({
        "load_average_1_5_15_at_start": list(os.getloadavg()),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cpu_threads_available": len(os.sched_getaffinity(0))},
    })  # fmt: skip
    runs = res.setdefault("section_runs", {})
    for name in ran:
        t0 = time.perf_counter()
        if name == "minhash":
            docs = synth_docs(2000 if args.quick else 20000, 2000, seed=0)
            res["doc_bytes_mean"] = float(np.mean([len(d.encode()) for d in docs]))
            res["minhash"] = [bench_minhash(docs, 128, s, 1000) for s in ("affine32", "legacy")]
        elif name == "pipeline":
            res["pipeline"] = bench_pipeline(500 if args.quick else None)
        elif name == "spark":
            res["spark"] = bench_spark("smoke" if args.quick else "cpu", args.spark_master)
        elif name == "extraction":
            res["extraction"] = bench_extraction(repeats)
        elif name == "pii":
            res["pii"] = bench_pii(500 if args.quick else 2000, repeats)
        elif name == "langid":
            res["langid"] = bench_langid(repeats)
        runs[name] = {"quick": args.quick, "seconds": time.perf_counter() - t0,
                      "finished": datetime.now(UTC).isoformat(timespec="seconds")}
    return write_results(json.loads(json.dumps(res, default=float)), out, lambda r: summary(r, ran), t_start)


if __name__ == "__main__":
    main()
