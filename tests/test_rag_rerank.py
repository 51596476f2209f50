from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from llmbook.rag.rerank import (
    CrossEncoderConfig,
    CrossEncoderReranker,
    LMRelevanceScorer,
    bce_with_logits,
    linear_warmup_decay,
    pair_logits,
    rerank,
    train_cross_encoder,
)

# A synthetic retrieval task: 40 objects, one fact each, asked about in one of three ways. Relevance is
# "the passage is about the object the question names"; held-out objects test that the model learned that.
THINGS = ["lamp", "violin", "bicycle", "kettle", "telescope", "umbrella", "anchor", "compass", "hammock", "lantern",
          "microscope", "saddle", "typewriter", "accordion", "canoe", "chessboard", "harp", "kayak", "loom", "mirror",
          "piano", "quilt", "rake", "sled", "tractor", "wheelbarrow", "xylophone", "yacht", "zither", "barometer",
          "cauldron", "drone", "easel", "flute", "globe", "helmet", "igloo", "jukebox", "kite", "ladder"]
TEMPLATES = [
    ("Where is the {t} kept?", "The {t} is kept in the {p}, next to the old boxes."),
    ("What color is the {t}?", "Everyone remembers that the {t} was painted {c} last spring."),
    ("Who owns the {t}?", "{o} bought the {t} at a market and still owns it."),
]
TRAIN, HELD_OUT = THINGS[:30], THINGS[30:]


def facts(seed: int = 0) -> dict[str, tuple[int, str, str]]:
    """object -> (template number, question, the passage that answers it)."""
    rng = random.Random(seed)
    table = {}
    for i, thing in enumerate(THINGS):
        question, passage = TEMPLATES[i % 3]
        fill = {"t": thing, "p": rng.choice(["attic", "garage", "cellar", "barn", "shed", "studio"]),
                "c": rng.choice(["red", "blue", "green", "yellow", "purple", "silver"]),
                "o": rng.choice(["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah"])}
        table[thing] = (i % 3, question.format(**fill), passage.format(**fill))
    return table


def training_pairs(seed: int = 0) -> list[tuple[str, str, float]]:
    """Per training question: its passage (1.0) and two of the same kind about other objects (0.0), which leave
    the object's name as the only clue. (A third negative of another kind taught nothing more: seeds 0-3 rank
    9-10 of 10 held-out passages first without it, and training costs a quarter less.)"""
    rng, table, pairs = random.Random(seed), facts(), []
    for thing in TRAIN:
        kind, question, passage = table[thing]
        same = [other for other in TRAIN if other != thing and table[other][0] == kind]
        pairs.append((question, passage, 1.0))
        pairs += [(question, table[other][2], 0.0) for other in rng.sample(same, 2)]
    return pairs


def held_out_hits(reranker: CrossEncoderReranker) -> int:
    """Held-out questions whose passage ranks first among it and 4 random held-out passages (chance: 2 of 10)."""
    rng, table, hits = random.Random(1), facts(), 0
    for thing in HELD_OUT:
        _, question, passage = table[thing]
        others = rng.sample([other for other in HELD_OUT if other != thing], 4)
        scores = reranker.score(question, [passage, *(table[other][2] for other in others)])
        hits += int(np.argmax(scores) == 0)
    return hits


PAIRS = [
    ("What is BM25?", "BM25 ranks documents by term frequency with saturation and length normalisation."),
    ("What is BM25?", "Paris is the capital of France."),
    ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("Who wrote Hamlet?", ""),
    ("long", " ".join(f"Sentence {i} of a passage that is longer than the 256 tokens kept." for i in range(60))),
]


@pytest.fixture(scope="module")
def untrained() -> CrossEncoderReranker:
    reranker, losses = train_cross_encoder(training_pairs(), CrossEncoderConfig(epochs=0))
    assert losses == []
    return reranker


@pytest.fixture(scope="module")
def reference_cross_encoder(untrained: CrossEncoderReranker, tmp_path_factory: pytest.TempPathFactory):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    directory = untrained.save(tmp_path_factory.mktemp("cross_encoder"))
    return directory, sentence_transformers.CrossEncoder(str(directory), device="cpu").eval()


def test_bce_matches_torch_and_the_schedule_ramps_up_then_down() -> None:
    logits = torch.tensor([-40.0, -3.0, -0.5, 0.0, 0.7, 5.0, 40.0])
    labels = torch.tensor([0.0, 1.0, 0.3, 1.0, 0.0, 1.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    diff = (bce_with_logits(logits, labels) - expected).abs().item()
    assert diff < 1e-6, f"max_abs_diff={diff}"
    # transformers' get_linear_schedule_with_warmup(3, 11) by hand: up in thirds, down in eighths, then 0.
    expected_rates = [0, 1 / 3, 2 / 3, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0, 0]
    assert [linear_warmup_decay(step, 3, 11) for step in range(13)] == pytest.approx(expected_rates, abs=1e-12)


def test_saved_cross_encoder_scores_like_sentence_transformers(untrained, reference_cross_encoder) -> None:
    directory, cross_encoder = reference_cross_encoder
    expected = cross_encoder.predict(PAIRS, activation_fn=torch.nn.Identity(), batch_size=2)
    ours = np.concatenate([untrained.score(query, [passage]) for query, passage in PAIRS])
    diff = float(np.abs(ours - expected).max())
    assert diff < 1e-5, f"max_abs_diff={diff}"
    assert cross_encoder.max_seq_length == untrained.max_length == 256
    loaded = CrossEncoderReranker.load(directory)
    passages = [passage for _, passage in PAIRS]
    assert np.array_equal(loaded.score("What is BM25?", passages), untrained.score("What is BM25?", passages))
    with pytest.raises(FileNotFoundError, match="config.json"):
        CrossEncoderReranker.load(directory / "missing")


def test_loss_matches_sentence_transformers_binary_cross_entropy(untrained, reference_cross_encoder) -> None:
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    _, cross_encoder = reference_cross_encoder
    queries, passages = map(list, zip(*PAIRS, strict=True))
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5])
    with torch.no_grad():
        expected = BinaryCrossEntropyLoss(cross_encoder)([queries, passages], labels)
        ours = bce_with_logits(pair_logits(untrained.model, untrained.tokenizer, queries, passages,
                                           max_length=untrained.max_length), labels)
    diff = (ours - expected).abs().item()
    assert diff < 1e-6, f"max_abs_diff={diff}"


def test_training_teaches_the_held_out_objects(untrained: CrossEncoderReranker) -> None:
    threshold = 8  # of 10 held-out questions; chance is 2
    before = held_out_hits(untrained)
    assert before < threshold, f"an untrained head already ranks {before}/10 first: the task is too easy"
    config = CrossEncoderConfig(epochs=2, batch_size=8, lr=1e-4, seed=0)  # a tiny task: few steps, larger rate
    pairs = training_pairs()
    trained, losses = train_cross_encoder(pairs, config)
    assert len(pairs) == 30 * 3 and len(losses) == 2 * 12  # 2 epochs of ceil(90 / 8) steps
    after = held_out_hits(trained)
    assert after >= threshold, f"{after}/10 held-out passages ranked first (untrained: {before}); losses {losses}"


@pytest.fixture(scope="module")
def tiny_lm(smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         initializer_range=0.2)  # large random weights: scores far apart, padding bugs visible
    return LlamaForCausalLM(config).eval(), smollm2_tokenizer


def test_lm_scorer_is_the_yes_no_log_odds_of_the_next_token(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    scorer = LMRelevanceScorer(model, tokenizer)
    query, passage = PAIRS[0]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Question: {query}\n\nPassage: {passage}\n\n"
                                     "Does the passage answer the question? Answer yes or no."}],
        tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, -1], dim=-1)
    yes, no = (tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no"))
    expected = (logps[yes] - logps[no]).item()
    diff = abs(float(scorer.score(query, [passage])[0]) - expected)
    assert diff < 1e-5, f"max_abs_diff={diff}"


def test_lm_scorer_batches_do_not_change_scores(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    scorer = LMRelevanceScorer(model, tokenizer)
    passages = [passage for _, passage in PAIRS]  # lengths from 1 to ~600 tokens: heavy left padding
    batched = scorer.score("Who wrote Hamlet?", passages, batch_size=5)
    alone = np.array([scorer.score("Who wrote Hamlet?", [passage])[0] for passage in passages])
    diff = float(np.abs(batched - alone).max())
    assert diff < 1e-5, f"max_abs_diff={diff}"
    assert np.ptp(alone) > 0.1, alone  # the random model does tell the passages apart
    with pytest.raises(ValueError, match="one token"):
        LMRelevanceScorer(model, tokenizer, yes="absolutely certainly")


class FixedScorer:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score(self, query: str, passages) -> np.ndarray:
        return np.array([self.scores[passage] for passage in passages], dtype=np.float32)


def test_rerank_orders_by_score_and_keeps_ties_stable() -> None:
    scorer = FixedScorer({"a": 0.5, "b": 2.0, "c": 0.5, "d": -1.0})
    candidates = [("id-a", "a"), ("id-b", "b"), ("id-c", "c"), ("id-d", "d")]
    assert rerank("q", candidates, scorer) == [("id-b", 2.0), ("id-a", 0.5), ("id-c", 0.5), ("id-d", -1.0)]
    assert [hit for hit, _ in rerank("q", candidates[::-1], scorer, top_n=3)] == ["id-b", "id-c", "id-a"]
    assert rerank("q", [], scorer) == []
    with pytest.raises(ValueError, match="top_n"):
        rerank("q", candidates, scorer, top_n=-1)


def test_training_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        train_cross_encoder([("q", "p", 1.0), ("q", "p", 2.0)])
    with pytest.raises(ValueError, match="no training examples"):
        train_cross_encoder([])


def test_lm_scorer_needs_a_chat_template(tiny_lm, untrained: CrossEncoderReranker) -> None:
    with pytest.raises(ValueError, match="chat template"):
        LMRelevanceScorer(tiny_lm[0], untrained.tokenizer)  # MiniLM's tokenizer has none
