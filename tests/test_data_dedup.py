"""MinHash vs datasketch (exact signature equality), LSH banding, planted-duplicate goals, line and file dedup."""

import random
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

datasketch = pytest.importorskip("datasketch")
from datasketch import MinHash, MinHashLSH  # noqa: E402

from llmbook.data.corpora import load_documents  # noqa: E402
from llmbook.data.dedup import (  # noqa: E402
    NearDedupConfig,
    UnionFind,
    datasketch_pairs,
    duplicate_rate,
    edited_copies,
    exact_dedup,
    exact_line_dedup,
    line_key,
    lsh_candidate_pairs,
    measured_s_curve,
    near_duplicate_clusters,
    normalize_text,
    optimal_bands,
    pair_precision_recall,
    plant_near_duplicates,
    remove_repeated_lines,
    s_curve,
    signatures,
    split_lines,
)
from llmbook.data.dedup_files import exact_line_dedup_files, minhash_dedup_files  # noqa: E402
from llmbook.data.minhash import (  # noqa: E402
    hash_shingles,
    jaccard,
    minhash_signatures,
    shingle_hashes_batch,
    shingles,
)

TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "Call me Ishmael. Some years ago never mind how long precisely having little or no money in my purse.",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "",
    "short",
    "a b c d e f g h i j k l m n o p",
]


@pytest.mark.parametrize("scheme", ["legacy", "affine32"])
@pytest.mark.parametrize("unit", ["word", "char"])
def test_signatures_equal_datasketch(scheme, unit):
    ours = minhash_signatures([hash_shingles(t, 5, unit, hash="sha1") for t in TEXTS], 128, 7, scheme)
    shingle_lists = [[s.encode() for s in shingles(t, 5, unit)] for t in TEXTS]
    ref = np.stack([m.hashvalues for m in MinHash.bulk(shingle_lists, num_perm=128, seed=7, scheme=scheme)])
    assert ours.dtype == ref.dtype
    diff = int(np.abs(ours.astype(np.int64) - ref.astype(np.int64)).max())
    assert diff == 0, f"max_abs_diff={diff}"


@pytest.mark.parametrize("scheme", ["legacy", "affine32"])
def test_fast_hash_permutation_stage_equals_datasketch(scheme):
    hl = shingle_hashes_batch(TEXTS, 3, "word")
    ours = minhash_signatures(hl, 64, 3, scheme, chunk=5)  # tiny chunks: documents split across chunks
    for h, row in zip(hl, ours):
        m = MinHash(num_perm=64, seed=3, scheme=scheme, hashfunc=int)
        m.update_batch([int(x) for x in h])
        diff = np.abs(row.astype(np.int64) - m.hashvalues.astype(np.int64)).max()
        assert np.array_equal(row, m.hashvalues), f"max_abs_diff={diff}"


def test_batch_hash_equals_single_and_counts_match_shingles():
    for unit in ("word", "char"):
        batch = shingle_hashes_batch(TEXTS, 5, unit)
        for t, h in zip(TEXTS, batch):
            assert np.array_equal(h, hash_shingles(t, 5, unit))
            assert len(h) == len(shingles(t, 5, unit))
            assert len(np.unique(h)) == len(set(shingles(t, 5, unit)))  # no collisions on these


@pytest.mark.parametrize("t", [0.5, 0.7, 0.85])
def test_optimal_bands_match_datasketch(t):
    lsh = MinHashLSH(threshold=t, num_perm=128)
    assert optimal_bands(t, 128) == (lsh.b, lsh.r)
    b, r = optimal_bands(t, 128)
    assert s_curve(0.2, b, r) < 0.2 and s_curve(0.95, b, r) > 0.9


def test_union_find():
    uf = UnionFind(6)
    uf.union(0, 1), uf.union(1, 2), uf.union(4, 5)
    lab = uf.labels()
    assert lab[0] == lab[2] != lab[3] and lab[4] == lab[5] != lab[0]


def test_exact_and_repeated_lines():
    docs = [{"id": str(i), "text": t, "meta": {}} for i, t in enumerate(["Hello  World!", "hello world", "x"])]
    kept, gone = exact_dedup(docs)
    assert [d["id"] for d in kept] == ["0", "2"] and gone == [("1", "exact_duplicate")]
    docs = [{"id": str(i), "text": f"Menu | Home\nbody {'abcd'[i]} text\nFooter line", "meta": {}} for i in range(4)]
    docs.append({"id": "z", "text": "Menu | Home\nFooter line", "meta": {}})
    kept, gone = remove_repeated_lines(docs, min_docs=3)
    assert kept[0]["text"] == "body a text" and gone == [("z", "all_lines_repeated")]


def test_planted_duplicates_goals():
    docs = list(load_documents(limit=600))
    planted, cid = plant_near_duplicates(docs, 0.2, seed=0)
    before = duplicate_rate(cid)
    labels, pairs = near_duplicate_clusters([d["text"] for d in planted])
    survivors = [cid[i] for i in range(len(planted)) if labels[i] == i]
    after = duplicate_rate(survivors)
    pr = pair_precision_recall(pairs, cid)
    assert before > 0.15 and after < 0.05, (before, after)
    assert pr["precision"] > 0.9 and pr["recall"] > 0.75, pr


def test_signature_estimate_tracks_exact_jaccard():
    a = " ".join(f"w{i}" for i in range(300))
    b = " ".join(f"w{i}" for i in range(60, 360))
    sa, sb = (set(shingles(x)) for x in (a, b))
    sig = minhash_signatures(shingle_hashes_batch([a, b]), 256, 1, "affine32")
    est = float(np.mean(sig[0] == sig[1]))
    assert abs(est - jaccard(sa, sb)) < 0.08, (est, jaccard(sa, sb))


def test_measured_s_curve_follows_theory_on_edited_copies():
    texts = [d["text"] for _, d in zip(range(150), load_documents("austen"))]
    cfg = NearDedupConfig(threshold=0.7, num_perm=128, seed=1)
    b, r = optimal_bands(cfg.threshold, cfg.num_perm)
    rows = measured_s_curve(edited_copies(texts, max_delete=0.5, seed=3), cfg, b, r)
    assert sum(row["pairs"] for row in rows) >= 100 and len(rows) >= 4
    for row in rows:  # every bin within 3 standard errors (plus MinHash's own noise) of 1 - (1 - s^r)^b
        assert abs(row["measured"] - row["theory"]) <= 3 * row["std_error"] + 0.1, row
    assert rows[-1]["measured"] > 0.9 and rows[0]["measured"] < 0.1  # both ends of the S are reached
    identical = measured_s_curve([(texts[0], texts[0])], cfg, b, r)
    assert identical == [{"jaccard": 1.0, "pairs": 1, "measured": 1.0, "theory": 1.0, "std_error": 0.0}]


# --- exact line dedup: raw (CS336) and normalized (CCNet) keys --------------------------------
def _reference_line_dedup(texts, min_count=2, per_document=False):
    """Independent reference: lines split with str.split on "\\n", compared as strings."""
    def lines(t):
        parts = t.split("\n")
        return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])

    counts = Counter()
    for t in texts:
        bodies = [ln.rstrip("\n") for ln in lines(t)]
        counts.update(set(bodies) if per_document else bodies)
    return ["".join(ln for ln in lines(t) if counts[ln.rstrip("\n")] < min_count) for t in texts]


def _random_texts(seed, n=30):
    r = random.Random(seed)
    pool = ["Home | About", "home | about!", "", "  ", "Share this\r", "床前明月光", "naïve café", "x" * 300,
            "Copyright 2024", "copyright 2025"]
    out = []
    for i in range(n):
        lines = [r.choice(pool) if r.random() < 0.5 else f"unique line {i}-{k} {r.random()}"
                 for k in range(r.randint(0, 8))]
        out.append("\n".join(lines) + ("\n" if r.random() < 0.5 else ""))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_count", [2, 3])
@pytest.mark.parametrize("count", ["lines", "documents"])
def test_raw_line_dedup_equals_reference(seed, min_count, count):
    texts = _random_texts(seed)
    got = exact_line_dedup(texts, mode="raw", min_count=min_count, count=count)
    assert got == _reference_line_dedup(texts, min_count, per_document=count == "documents")
    assert any(g != t for g, t in zip(got, texts))  # the pool lines repeat: something was removed


def test_line_modes_differ_as_documented():
    texts = ["Home | About\nbody one\n", "home about!!\nbody two\n", "body one\nfoot\nfoot\n"]
    raw = exact_line_dedup(texts)  # byte for byte: only "body one" (twice) and "foot" (twice in one doc)
    assert raw == ["Home | About\n", "home about!!\nbody two\n", ""]
    per_doc = exact_line_dedup(texts, count="documents")  # "foot" is in one document only
    assert per_doc == ["Home | About\n", "home about!!\nbody two\n", "foot\nfoot\n"]
    norm = exact_line_dedup(texts, mode="normalized", count="documents")  # case and punctuation ignored
    assert norm == ["", "body two", "foot\nfoot"]
    # normalized keys ignore case and punctuation, raw keys do not
    assert line_key("Home | About") == line_key("home about!!") and line_key("Home | About", "raw") != line_key(
        "home about!!", "raw")
    assert split_lines("a\n\nb") == ["a\n", "\n", "b"] and "".join(split_lines("x\r\ny\n")) == "x\r\ny\n"
    docs = [{"id": str(i), "text": t, "meta": {}} for i, t in enumerate(texts)]
    kept, gone = remove_repeated_lines(docs, min_docs=2, mode="raw")
    assert [d["text"] for d in kept] == ["Home | About\n", "home about!!\nbody two\n", "foot\nfoot\n"] and not gone
    kept, gone = remove_repeated_lines(docs, min_docs=2)  # CCNet key: "Home | About" = "home about!!"
    assert [d["text"] for d in kept] == ["body two", "foot\nfoot"] and gone == [("0", "all_lines_repeated")]


def test_line_dedup_bad_settings():
    with pytest.raises(ValueError, match=r"mode must be one of \('raw', 'normalized'\), got 'bytes'"):
        exact_line_dedup(["a"], mode="bytes")
    with pytest.raises(ValueError, match="min_count must be an int >= 2, got 1"):
        exact_line_dedup(["a"], min_count=1)
    with pytest.raises(ValueError, match=r"count must be one of \('lines', 'documents'\), got 'docs'"):
        exact_line_dedup(["a"], count="docs")
    with pytest.raises(ValueError, match="min_docs must be an int >= 2, got 1"):
        remove_repeated_lines([], min_docs=1)


def test_exact_line_dedup_files(tmp_path):
    texts = _random_texts(7, n=12)
    src = tmp_path / "in"
    src.mkdir()
    paths = []
    for i, t in enumerate(texts):
        paths.append(src / f"doc{i:02d}.txt")
        paths[-1].write_bytes(t.encode("utf-8"))
    report = exact_line_dedup_files(paths, tmp_path / "out")
    assert [p.name for p in report.outputs] == [p.name for p in paths]
    expected = _reference_line_dedup(texts)
    assert [p.read_bytes().decode("utf-8") for p in report.outputs] == expected
    assert report.lines_in == sum(len(split_lines(t)) for t in texts)
    assert report.lines_removed == report.lines_in - sum(len(split_lines(t)) for t in expected) > 0
    norm = exact_line_dedup_files(paths, tmp_path / "norm", mode="normalized", count="documents", min_count=3)
    ref = exact_line_dedup(texts, mode="normalized", count="documents", min_count=3)  # same lines, other joining
    assert [[ln.strip() for ln in p.read_bytes().decode().split("\n") if ln.strip()] for p in norm.outputs] == [
        [ln.strip() for ln in t.split("\n") if ln.strip()] for t in ref
    ]
    # raw mode compares bytes: a Latin-1 file works, and a file that repeats itself loses the copies
    (tmp_path / "l1").mkdir()
    a, b = tmp_path / "l1" / "a.txt", tmp_path / "l1" / "b.txt"
    a.write_bytes(b"caf\xe9\nsame\n")
    b.write_bytes(b"same\nother")
    report = exact_line_dedup_files([a, b], tmp_path / "l1out")
    assert [p.read_bytes() for p in report.outputs] == [b"caf\xe9\n", b"other"]


def test_dedup_files_refuse_bad_paths(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        (tmp_path / d / "same.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="share the name 'same.txt'"):
        exact_line_dedup_files([tmp_path / "x" / "same.txt", tmp_path / "y" / "same.txt"], tmp_path / "o")
    with pytest.raises(ValueError, match="would overwrite it"):
        exact_line_dedup_files([tmp_path / "x" / "same.txt"], tmp_path / "x")
    with pytest.raises(ValueError, match="input_paths must be a list of paths"):
        minhash_dedup_files(str(tmp_path / "x" / "same.txt"), tmp_path / "o")
    with pytest.raises(ValueError, match="mode must be one of"):
        exact_line_dedup_files([tmp_path / "x" / "same.txt"], tmp_path / "o", mode="exact")
    with pytest.raises(ValueError, match=r"bands must be None or a divisor of num_perm=100 \[1, 2, 4, 5, 10, 20, 25"):
        minhash_dedup_files([tmp_path / "x" / "same.txt"], tmp_path / "o", num_hashes=100, num_bands=8)


# --- MinHash options: bands, normalisation, exact verification vs datasketch and brute force ----
def test_normalize_text():
    assert normalize_text("  Héllo,\tWORLD!!  Ça   va?\n") == "hello world ca va"
    assert normalize_text("Ｆｏｏ—bar’s") == "ｆｏｏbars"  # dashes/quotes are punctuation; width is kept
    assert normalize_text("床前明月光，疑是地上霜。") == "床前明月光疑是地上霜"
    assert normalize_text("한국어 텍스트") == "한국어 텍스트"  # Hangul recomposed after NFD
    with pytest.raises(ValueError, match="verify_with must be one of"):
        NearDedupConfig(verify_with="estimate")
    with pytest.raises(ValueError, match="shingle_hash must be one of"):
        NearDedupConfig(shingle_hash="md5")
    assert NearDedupConfig(bands=16).band_rows() == (16, 8)
    assert NearDedupConfig(threshold=0.7).band_rows() == optimal_bands(0.7, 128)


@pytest.fixture(scope="module")
def planted():
    docs = [{**d, "text": d["text"][:1500]} for _, d in zip(range(60), load_documents("austen"))]
    docs += [{**d, "text": d["text"][:500]} for _, d in zip(range(20), load_documents("chinese_classics"))]
    planted, cid = plant_near_duplicates(docs, 0.5, seed=1)  # 120 texts, 40 edited copies
    return [d["text"] for d in planted], cid


@pytest.fixture(scope="module")
def spread(planted):
    """The planted texts plus copies with up to 60 % of words deleted: pairs at every Jaccard similarity."""
    texts, _ = planted
    return texts + [c for _, c in edited_copies(texts[:25], max_delete=0.6, min_words=100, seed=2)]


@pytest.mark.parametrize("normalize", [False, True])
def test_candidates_equal_datasketch_with_same_bands(spread, normalize):
    texts = spread
    cfg = NearDedupConfig(threshold=0.6, bands=64, normalize=normalize, shingle_hash="sha1", verify=False)
    _, ours = near_duplicate_clusters(texts, cfg)
    ref = datasketch_pairs(texts, cfg)
    assert ours == ref and len(ours) > 30, (len(ours), len(ref), len(ours ^ ref))
    vcfg = NearDedupConfig(**{**cfg.__dict__, "verify": True, "verify_with": "signature" if normalize else "exact"})
    assert near_duplicate_clusters(texts, vcfg)[1] == datasketch_pairs(texts, vcfg) < ours


def test_fast_hash_candidates_agree_with_datasketch(planted):
    """Other shingle hashes draw other permutations: pairs may differ only where the S-curve is not 0 or 1."""
    texts, _ = planted
    cfg = NearDedupConfig(threshold=0.6, bands=16, verify=False)
    ours, ref = near_duplicate_clusters(texts, cfg)[1], datasketch_pairs(texts, cfg)
    sets = [set(shingles(t)) for t in texts]
    p = {pair: float(s_curve(jaccard(sets[pair[0]], sets[pair[1]]), 16, 8)) for pair in ours | ref}
    assert all(0.001 < p[pair] < 0.999 for pair in ours ^ ref), sorted(p[pair] for pair in ours ^ ref)
    assert all(pair in ours and pair in ref for pair in p if p[pair] >= 0.999)
    expected = sum(2 * q * (1 - q) for q in p.values())  # two independent draws disagree with prob 2p(1-p)
    assert len(ours ^ ref) <= expected + 3 * expected**0.5 + 1, (len(ours ^ ref), expected, len(ours | ref))


def test_exact_verification_equals_brute_force(planted, spread):
    texts, cid = planted
    cfg = NearDedupConfig(threshold=0.7, bands=32, ngram=3, normalize=True, verify=False)
    _, cand = near_duplicate_clusters(texts, cfg)
    _, verified = near_duplicate_clusters(texts, NearDedupConfig(**{**cfg.__dict__, "verify": True,
                                                                     "verify_with": "exact"}))
    sets = [set(shingles(normalize_text(t), 3)) for t in texts]  # brute force, independent of dedup.py
    exact = {(i, j) for i, j in combinations(range(len(texts)), 2) if jaccard(sets[i], sets[j]) >= 0.7}
    assert verified == {p for p in cand if p in exact}
    assert len(verified & exact) / len(exact) > 0.95  # 32 bands of 4 rows: a miss above 0.7 is rare
    pr = pair_precision_recall(verified, cid)
    assert pr["precision"] == 1.0 and pr["recall"] > 0.8, pr
    _, cand = near_duplicate_clusters(spread, cfg)  # with pairs near the threshold, verification removes some
    _, verified = near_duplicate_clusters(spread, NearDedupConfig(**{**cfg.__dict__, "verify": True,
                                                                      "verify_with": "exact"}))
    sets = [set(shingles(normalize_text(t), 3)) for t in spread]
    assert verified == {(i, j) for i, j in cand if jaccard(sets[i], sets[j]) >= 0.7} < cand


def test_bands_change_the_candidates(planted):
    texts, _ = planted
    sig = signatures(texts, NearDedupConfig())
    few, many = lsh_candidate_pairs(sig, 4, 32), lsh_candidate_pairs(sig, 64, 2)
    assert few < many  # rows 2 lets far more pairs collide than rows 32 (here a strict superset)


def test_minhash_dedup_files_keeps_first_of_each_cluster(tmp_path, planted):
    texts, cid = planted
    texts, cid = texts[:80], cid[:80]
    paths = []
    (tmp_path / "in").mkdir()
    for i, t in enumerate(texts):
        paths.append(tmp_path / "in" / f"f{i:03d}.txt")
        paths[-1].write_text(t, encoding="utf-8")
    report = minhash_dedup_files(paths, tmp_path / "out", 100, 20, 5, 0.7)
    labels, pairs = near_duplicate_clusters(
        texts, NearDedupConfig(threshold=0.7, num_perm=100, bands=20, normalize=True, verify_with="exact")
    )
    assert report.pairs == pairs and len(pairs) > 5
    assert [p.name for p in report.outputs] == [paths[i].name for i in range(len(texts)) if labels[i] == i]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in report.outputs]
    assert all(report.outputs[0].parent / c[0].name in report.outputs for c in report.clusters)
    assert all((report.outputs[0].parent / p.name).read_text() == p.read_text() for p in paths[:5]
               if report.outputs[0].parent / p.name in report.outputs)
    survivors = [cid[i] for i in range(len(texts)) if labels[i] == i]
    assert duplicate_rate(survivors) < duplicate_rate(cid) / 3, (duplicate_rate(survivors), duplicate_rate(cid))
    loose = minhash_dedup_files(paths, tmp_path / "loose", 100, 20, 5, 0.7, verify=False)
    assert loose.pairs >= report.pairs  # unverified candidates include every verified pair
