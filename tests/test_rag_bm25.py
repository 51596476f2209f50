"""llmbook.rag.tokens and llmbook.rag.bm25: search tokens, and BM25 equal to bm25s and rank_bm25."""

from __future__ import annotations

import math
from collections import Counter

import bm25s
import numpy as np
import pytest
from rank_bm25 import BM25L, BM25Okapi, BM25Plus

from llmbook.rag.bm25 import BM25, METHODS, BM25Config
from llmbook.rag.tokens import ENGLISH_STOPWORDS, search_tokens

K1, B, DELTA = 1.2, 0.7, 0.8  # not the defaults, so a parameter silently ignored on either side shows


def zipf_corpus(seed: int, n_docs: int = 300, vocab: int = 2000, exponent: float = 1.1) -> list[list[str]]:
    """Documents of 5-80 words drawn from a finite Zipf law over "w0".."w{vocab-1}" (w0 the most frequent)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** exponent
    lengths = rng.integers(5, 80, size=n_docs)
    return [[f"w{i}" for i in rng.choice(vocab, size=n, p=p / p.sum())] for n in lengths]


# Frequent, middling and rare terms, a term repeated in the query, a term no document has.
ZIPF_QUERIES = [["w1", "w50", "w700"], ["w3", "w3", "w120"], ["w200"], ["w10", "w40", "w80", "w400", "unknown"]]

HAND_DOCS = [
    "BM25 ranks documents by term frequency and inverse document frequency.",
    "Dense retrieval embeds the query and the documents with a neural encoder.",
    "",  # an empty document is allowed
    "def parse_args(argv): return argparse.ArgumentParser().parse_args(argv)",
    "document.getElementById('query').value reads the search box",
    "Hybrid search fuses BM25 and dense retrieval scores with reciprocal rank fusion.",
]
HAND_QUERIES = ["BM25 document frequency", "element by id", "dense retrieval retrieval", "parse_args"]

CHINESE_DOCS = [
    "检索增强生成先检索相关文档，再让语言模型根据文档回答问题。",
    "BM25是一种经典的稀疏检索方法，按词频和逆文档频率打分。",
    "向量检索把查询和文档编码成稠密向量，用余弦相似度排序。",
    "中文没有空格，所以搜索引擎常用字符二元组建立倒排索引。",
    "倒排索引为每个词记录包含它的文档编号和词频。",
    "混合检索融合稀疏检索和稠密检索的结果。",
]
CHINESE_QUERIES = ["经典的稀疏检索方法", "倒排索引的词频", "语言模型回答问题", "稠密向量检索"]


def config(method: str) -> BM25Config:
    return BM25Config(method=method, k1=K1, b=B, delta=DELTA)


def bm25s_index(corpus: list[list[str]], method: str) -> bm25s.BM25:
    reference = bm25s.BM25(method=method, k1=K1, b=B, delta=DELTA, dtype="float64")  # float64 to compare at 1e-6
    reference.index(corpus, show_progress=False)
    return reference


def assert_close(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    max_abs_diff = float(np.abs(ours - reference).max())
    assert np.allclose(ours, reference, rtol=1e-6, atol=1e-9), f"{what}: max_abs_diff={max_abs_diff:.3e}"


def assert_same_hits(ids: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray, what: str) -> None:
    """Same ids in the same order, up to ties: bm25s breaks ties its own way (often higher index first), and
    which of the documents tied at the k-th score make the cut is arbitrary, so those are left out."""
    ref_ids = ref_ids[np.lexsort((ref_ids, -np.round(ref_scores, 9)))]  # ties by lower index, as ours
    above_cut = np.round(np.sort(ref_scores)[::-1], 9) > round(float(ref_scores.min()), 9)
    assert ids[above_cut].tolist() == ref_ids[above_cut].tolist(), f"{what}: {ids} vs bm25s {ref_ids}"


CORPORA = {
    "zipf": (zipf_corpus(seed=0), ZIPF_QUERIES),
    "hand": ([search_tokens(d) for d in HAND_DOCS], [search_tokens(q) for q in HAND_QUERIES]),
    "chinese": ([search_tokens(d) for d in CHINESE_DOCS], [search_tokens(q) for q in CHINESE_QUERIES]),
}


# ---- equal to bm25s -------------------------------------------------------------------------------


@pytest.mark.parametrize("corpus_name", sorted(CORPORA))
@pytest.mark.parametrize("method", METHODS)
def test_scores_and_top_k_equal_bm25s(method: str, corpus_name: str) -> None:
    corpus, queries = CORPORA[corpus_name]
    ours = BM25(config(method)).index(corpus)
    reference = bm25s_index(corpus, method)
    k = min(5, len(corpus))
    for query in queries:
        assert_close(ours.scores(query), reference.get_scores(query), f"{method} {corpus_name} {query}")
        ids, scores = ours.search(query, k)
        ref_ids, ref_scores = reference.retrieve([query], k=k, show_progress=False)
        assert_close(scores, ref_scores[0], f"top-{k} scores {method} {corpus_name} {query}")
        assert_same_hits(ids, ref_ids[0], ref_scores[0], f"top-{k} ids {method} {corpus_name} {query}")


def test_chinese_queries_find_their_document() -> None:
    corpus, queries = CORPORA["chinese"]
    bm25 = BM25().index(corpus)
    assert [int(bm25.search(q, 1)[0][0]) for q in queries] == [1, 4, 0, 2]


# ---- equal to rank_bm25 where its formulas coincide ---------------------------------------------


def test_rank_bm25_okapi_is_k1_plus_1_times_robertson() -> None:
    # BM25Okapi floors negative idfs (terms in more than half the documents) at epsilon * mean idf, where
    # bm25s and we clamp them at 0; so compare on a corpus with every such term removed.
    corpus = zipf_corpus(seed=1)
    df = Counter(term for doc in corpus for term in set(doc))
    corpus = [[t for t in doc if df[t] <= len(corpus) / 2] for doc in corpus]
    assert max(Counter(t for doc in corpus for t in set(doc)).values()) <= len(corpus) / 2
    assert any(count > len(corpus) / 2 for count in df.values())  # the filter removed something
    ours = BM25(config("robertson")).index(corpus)
    reference = BM25Okapi(corpus, k1=K1, b=B)
    for query in ZIPF_QUERIES:
        assert_close((K1 + 1) * ours.scores(query), reference.get_scores(query), f"BM25Okapi {query}")


def test_robertson_clamps_common_terms_to_zero_where_rank_bm25_floors() -> None:
    corpus = zipf_corpus(seed=1)
    common = "w0"  # the most frequent word is in nearly every document
    assert sum(common in doc for doc in corpus) > len(corpus) / 2
    assert not BM25(config("robertson")).index(corpus).scores([common]).any()
    assert (BM25Okapi(corpus, k1=K1, b=B).get_scores([common]) > 0).sum() > len(corpus) / 2


def test_rank_bm25_plus_equals_bm25_plus() -> None:
    corpus = zipf_corpus(seed=2)
    ours = BM25(config("bm25+")).index(corpus)
    reference = BM25Plus(corpus, k1=K1, b=B, delta=DELTA)
    for query in ZIPF_QUERIES:
        assert_close(ours.scores(query), reference.get_scores(query), f"BM25Plus {query}")


def test_rank_bm25_l_is_tf_weighted_sum_of_single_term_bm25l() -> None:
    # rank_bm25 0.2.2 multiplies each term's BM25L weight by the raw tf (its issue #5), so absent terms
    # score 0 and tf > 1 counts twice: rank_bm25(d, q) = sum over query tokens t of tf_td * ours(d, [t]).
    corpus = zipf_corpus(seed=3)
    ours = BM25(config("bm25l")).index(corpus)
    reference = BM25L(corpus, k1=K1, b=B, delta=DELTA)
    counts = [Counter(doc) for doc in corpus]
    for query in ZIPF_QUERIES:
        expected = sum(np.array([c[t] for c in counts]) * ours.scores([t]) for t in query)
        assert_close(expected, reference.get_scores(query), f"BM25L {query}")


# ---- hand-derived ---------------------------------------------------------------------------------

HAND_CORPUS = [["cat", "sat", "mat"], ["dog", "sat"], ["cat", "cat", "hat", "on", "mat"]]  # L_avg = 10/3


def test_lucene_by_hand() -> None:
    bm25 = BM25(BM25Config(method="lucene", k1=1.5, b=0.75)).index(HAND_CORPUS)
    idf_cat = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # N = 3, df(cat) = 2
    norm_0 = 1 - 0.75 + 0.75 * 3 / (10 / 3)  # L_0 = 3
    norm_2 = 1 - 0.75 + 0.75 * 5 / (10 / 3)  # L_2 = 5
    expected = [idf_cat * 1 / (1 + 1.5 * norm_0), 0.0, idf_cat * 2 / (2 + 1.5 * norm_2)]
    assert_close(bm25.scores(["cat"]), np.array(expected), "lucene by hand")


def test_bm25_plus_by_hand_gives_absent_terms_the_floor() -> None:
    bm25 = BM25(BM25Config(method="bm25+", k1=1.5, b=0.75, delta=0.5)).index(HAND_CORPUS)
    idf_dog = math.log((3 + 1) / 1)  # N = 3, df(dog) = 1
    norm_1 = 1 - 0.75 + 0.75 * 2 / (10 / 3)  # L_1 = 2
    expected = [idf_dog * 0.5, idf_dog * (2.5 * 1 / (1 + 1.5 * norm_1) + 0.5), idf_dog * 0.5]
    assert_close(bm25.scores(["dog", "dog"]), 2 * np.array(expected), "bm25+ by hand, query term twice")


def test_inverted_index_postings() -> None:
    bm25 = BM25().index(HAND_CORPUS)
    assert (bm25.n_docs, bm25.vocabulary_size) == (3, 6)
    docs, tf = bm25.postings("cat")
    assert docs.tolist() == [0, 2] and tf.tolist() == [1, 2]
    assert bm25.postings("unknown")[0].size == 0


# ---- search, persistence, errors ------------------------------------------------------------------


def test_search_ties_by_lower_index_and_k_larger_than_corpus() -> None:
    bm25 = BM25().index([["b"], ["a", "x"], ["a", "x"], [], ["a", "x"]])
    ids, scores = bm25.search(["a"], k=2)
    assert ids.tolist() == [1, 2] and scores[0] == scores[1] > 0
    ids, scores = bm25.search(["a"], k=50)
    assert ids.tolist() == [1, 2, 4, 0, 3] and scores[-1] == 0
    many_ids, many_scores = bm25.search_many([["a"], ["b"]], k=50)
    assert many_ids.shape == (2, 5) and many_ids[0].tolist() == ids.tolist()
    assert many_ids[1, 0] == 0 and np.array_equal(many_scores[1], np.sort(bm25.scores(["b"]))[::-1])
    # 66 documents tie at one score and 34 at zero: big enough that an unstable sort would shuffle them.
    tied = BM25().index([["a"] if i % 3 else ["b", "c"] for i in range(100)])
    expected = [i for i in range(100) if i % 3] + [i for i in range(100) if not i % 3]
    assert tied.search(["a"], k=80)[0].tolist() == expected[:80]


def test_identifier_query_finds_code() -> None:
    corpus, _ = CORPORA["hand"]
    bm25 = BM25().index(corpus)
    assert int(bm25.search(search_tokens("element by id"), 1)[0][0]) == 4
    assert int(bm25.search(search_tokens("parse args"), 1)[0][0]) == 3


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_is_exact(method: str, tmp_path) -> None:
    corpus = zipf_corpus(seed=4, n_docs=50) + CORPORA["chinese"][0]
    bm25 = BM25(config(method)).index(corpus)
    path = tmp_path / "index.bm25"
    bm25.save(path)
    loaded = BM25.load(path)
    assert loaded.config == bm25.config and loaded.terms == bm25.terms
    for query in [*ZIPF_QUERIES, *CORPORA["chinese"][1]]:
        assert np.array_equal(loaded.scores(query), bm25.scores(query)), f"{method} {query}"


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no BM25 index"):
        BM25.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a BM25 index"):
        BM25.load(tmp_path / "other.npz")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "bm26"}, "method"),
        ({"k1": -0.1}, "k1"),
        ({"b": 1.5}, "b"),
        ({"b": -0.1}, "b"),
        ({"delta": -1}, "delta"),
    ],
)
def test_bad_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BM25Config(**kwargs)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        BM25().index([])
    with pytest.raises(ValueError, match="not a string"):
        BM25().index(["a whole string"])
    with pytest.raises(ValueError, match="not a string"):
        BM25().index([["a"]]).scores("a")
    with pytest.raises(ValueError, match="index is empty"):
        BM25().scores(["a"])


# ---- tokeniser ------------------------------------------------------------------------------------


def test_cjk_bigrams_unigrams_both() -> None:
    assert search_tokens("检索增强生成") == ["检索", "索增", "增强", "强生", "生成"]
    assert search_tokens("检索增强", cjk="unigram") == ["检", "索", "增", "强"]
    assert search_tokens("检索增", cjk="both") == ["检", "检索", "索", "索增", "增"]
    assert search_tokens("用BM25检索，中 文") == ["用", "bm25", "检索", "中", "文"]  # one-character runs stay
    assert search_tokens("日本語のテキスト") == ["日本", "本語", "語の", "のテ", "テキ", "キス", "スト"]
    assert search_tokens("한국어 검색") == ["한국", "국어", "검색"]
    with pytest.raises(ValueError, match="cjk"):
        search_tokens("检索", cjk="trigram")


def test_identifiers_whole_and_parts() -> None:
    assert search_tokens("parse_args") == ["parse_args", "parse", "args"]
    assert search_tokens("getElementById") == ["getelementbyid", "get", "element", "by", "id"]
    assert search_tokens("os.path.join") == ["os.path.join", "os", "path", "join"]
    assert search_tokens("HTTPServer") == ["httpserver", "http", "server"]
    assert search_tokens("__init__ base64 Hello") == ["__init__", "init", "base64", "hello"]
    assert search_tokens("getElementById", split_identifiers=False) == ["getelementbyid"]
    assert search_tokens("getElementById", lowercase=False) == ["getElementById", "get", "Element", "By", "Id"]
    assert set(search_tokens("element by id")) < set(search_tokens("getElementById"))


def test_nfkc_folding_and_unicode_words() -> None:
    assert search_tokens("ＡＢＣ１２３ Ｐｙｔｈｏｎ ﬁle") == ["abc123", "python", "file"]
    assert search_tokens("Привет, Ελληνικά! state-of-the-art 🙂") == ["привет", "ελληνικά", "state", "of", "the", "art"]


def test_stopwords() -> None:
    assert {"the", "of", "and", "is", "by"} <= ENGLISH_STOPWORDS and 80 <= len(ENGLISH_STOPWORDS) <= 150
    text = "The getElementById of the page"
    assert search_tokens(text) == ["the", "getelementbyid", "get", "element", "by", "id", "of", "the", "page"]
    assert search_tokens(text, stopwords=ENGLISH_STOPWORDS) == ["getelementbyid", "get", "element", "id", "page"]
    kept_case = ["getElementById", "get", "Element", "Id", "page"]
    assert search_tokens(text, lowercase=False, stopwords=ENGLISH_STOPWORDS) == kept_case
