"""MinHash vs datasketch (exact signature equality), LSH banding, planted-duplicate goals."""

import numpy as np
import pytest

datasketch = pytest.importorskip("datasketch")
from datasketch import MinHash, MinHashLSH  # noqa: E402

from llmbook.data.corpora import load_documents  # noqa: E402
from llmbook.data.dedup import (  # noqa: E402
    NearDedupConfig,
    UnionFind,
    duplicate_rate,
    edited_copies,
    exact_dedup,
    measured_s_curve,
    near_duplicate_clusters,
    optimal_bands,
    pair_precision_recall,
    plant_near_duplicates,
    remove_repeated_lines,
    s_curve,
)
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
