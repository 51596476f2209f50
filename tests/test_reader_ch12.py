"""Library helpers chapters 1 and 2 use to back their prose: where two BPE merge lists part, decoy passkey prompts."""

import random
import re

import torch

from llmbook.tokenization import reference as ref
from llmbook.tokenization import train_bpe
from llmbook.training import long_context as lc


def test_first_merge_difference_counts_both_pairs_at_the_split():
    # "aaabdaaabac": (a,a) occurs 4 times and is merged first; then (aa,a) and (a,b) occur twice each,
    # and ours takes (a,b), the pair of older tokens. A list that takes (aa,a) parts from ours at a tie.
    ours = train_bpe("aaabdaaabac", 258)
    assert ref.first_merge_difference(ours, [(b"a", b"a"), (b"a", b"b")], "aaabdaaabac") is None
    diff = ref.first_merge_difference(ours, [(b"a", b"a"), (b"aa", b"a")], "aaabdaaabac")
    assert (diff.rank, diff.ours, diff.theirs) == (1, (b"a", b"b"), (b"aa", b"a"))
    assert (diff.ours_count, diff.theirs_count) == (2, 2) and diff.tie
    # "aaab": (a,a) occurs twice, (a,b) once; a list that merges (a,b) first did not count as we do.
    diff = ref.first_merge_difference(train_bpe("aaab", 257), [(b"a", b"b")], "aaab")
    assert (diff.rank, diff.ours_count, diff.theirs_count, diff.tie) == (0, 2, 1, False)


def test_hf_byte_merges_are_the_trained_pairs_as_bytes():
    text = "low lower lowest newest widest " * 20
    hf = ref.train_hf_byte_bpe(text, 256 + 6)
    merges = ref.hf_byte_merges(hf)
    assert len(merges) == 6 and all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in merges)
    assert b" " in {a for a, _ in merges} | {a[:1] for a, _ in merges}  # byte-level: "Ġ" read back as a space
    ours = train_bpe(text, 256 + 6)
    diff = ref.first_merge_difference(ours, merges, text)
    assert diff is None or diff.tie  # same counts; only a tie can part them


class DigitTokenizer:
    def encode(self, text: str) -> list[int]:
        return [min(ord(c), 127) for c in text]


class Retriever(torch.nn.Module):
    """Reads the stated key and predicts it as the answer: a perfect retriever, and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, 128)
        for row, seq in enumerate(ids.tolist()):
            stated = re.search(r"The pass key is (\d+)\.", "".join(map(chr, seq))).group(1)
            answer = [ord(c) for c in " " + stated]
            for offset, token in enumerate(answer):  # position t predicts token t + 1
                logits[row, len(seq) - len(answer) - 1 + offset, token] = 1.0
        return type("Out", (), {"logits": logits})()


def test_decoy_prompts_state_another_key_and_a_retriever_fails_them():
    tok = DigitTokenizer()
    plain = lc.passkey_example(tok, 120, n_digits=5, depth=0.5, rng=random.Random(3))
    decoy = lc.passkey_example(tok, 120, n_digits=5, depth=0.5, rng=random.Random(3), decoy=True)
    assert len(decoy[0]) == 120 and decoy[1:] == plain[1:] and decoy[0][decoy[1]:] == plain[0][plain[1]:]
    stated = re.search(r"The pass key is (\d+)\.", "".join(map(chr, decoy[0]))).group(1)
    assert " " + stated != "".join(map(chr, decoy[0][decoy[1]:]))  # the answer is not the stated key
    model = Retriever()
    assert lc.passkey_accuracy(model, tok, 100, trials=6, n_digits=5) == {"key": 1.0, "token": 1.0}
    control = lc.passkey_accuracy(model, tok, 100, trials=6, n_digits=5, decoy=True)
    assert control["key"] == 0.0 and control["token"] < 1.0
