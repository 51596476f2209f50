"""llmbook.alignment.trl_reference: our losses next to trl 1.16's on one batch, and that the table can tell them apart.

The inputs are seeded random log-probabilities shaped like a real batch: per-token means in (-2, -0.05)
(both branches of ORPO's log1mexp), sums over 5-29 tokens, a reference a few nats away, and mismatched
pairs that give KTO a positive z₀ (so the reference point is live, not trl's clamp at 0).
"""

from __future__ import annotations

import sys

import pytest
import torch

from llmbook.alignment import trl_reference
from llmbook.alignment.trl_reference import trl_side_by_side

B = 6
ROWS = ["DPO (sigmoid)", "conservative DPO (ε = 0.1)", "IPO (per-token log-probabilities)", "robust DPO (ε = 0.1)",
        "SimPO (γ/β = 0.5)", "ORPO", "KTO", "Bradley-Terry reward model"]
DPO_FAMILY = set(ROWS[:4])


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor | float]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 30, (4 * B,), generator=g).float()  # policy and reference share the answers
    means = -0.05 - 1.95 * torch.rand(4 * B, generator=g)
    means[2 * B:] = (means[:2 * B] + 0.2 * torch.randn(2 * B, generator=g)).clamp(max=-0.01)
    lengths[2 * B:] = lengths[:2 * B]
    sums = means * lengths
    chosen_sum, rejected_sum, ref_chosen_sum, ref_rejected_sum = sums.split(B)
    chosen_mean, rejected_mean, ref_chosen_mean, ref_rejected_mean = means.split(B)
    kl_ref = -40 * torch.rand(B, generator=g)
    return {"chosen_sum": chosen_sum, "rejected_sum": rejected_sum, "ref_chosen_sum": ref_chosen_sum,
            "ref_rejected_sum": ref_rejected_sum, "chosen_mean": chosen_mean, "rejected_mean": rejected_mean,
            "ref_chosen_mean": ref_chosen_mean, "ref_rejected_mean": ref_rejected_mean,
            "chosen_nll": -chosen_mean, "kl_policy": kl_ref + 2 * torch.rand(B, generator=g), "kl_ref": kl_ref,
            "beta": 0.1, "simpo_beta": 2.0, "ipo_beta": 0.1}


def differing(rows: list[dict]) -> set[str]:
    return {row["loss"] for row in rows if row["|difference|"] >= 1e-6}


def test_every_loss_equals_trl(batch):
    rows = trl_side_by_side(**batch)
    assert [row["loss"] for row in rows] == ROWS
    for row in rows:
        assert set(row) == {"loss", "llmbook", "trl", "trl code", "|difference|"}
        assert row["trl code"].startswith("trl.")
        assert row["|difference|"] == abs(row["llmbook"] - row["trl"]) and row["|difference|"] < 1e-6, row
        assert 0 < row["llmbook"] < float("inf")
    assert differing(rows) == set()


@pytest.mark.parametrize(("name", "wrong", "expected"), [
    # a β 10% off on our side: every DPO-family row, and only those, tells
    ("dpo_loss", lambda real: lambda *a, beta, **k: real(*a, beta=1.1 * beta, **k), DPO_FAMILY),
    # KTO without its reference point (z₀ = 0): z₀ > 0 here, so the row tells
    ("kto_kl_estimate", lambda real: lambda policy, ref: torch.tensor(0.0), {"KTO"}),
])
def test_a_wrong_loss_shows_in_its_rows(batch, monkeypatch, name, wrong, expected):
    monkeypatch.setattr(trl_reference, name, wrong(getattr(trl_reference, name)))
    rows = trl_side_by_side(**batch)
    assert differing(rows) == expected
    # ≥ 10x the tolerance; KTO's is ~1e-4 only: z₀ raises the desirable losses and lowers the undesirable ones
    assert min(row["|difference|"] for row in rows if row["loss"] in expected) > 1e-5


def test_the_same_numbers_on_both_sides_matter(batch):
    # both columns move with the inputs: halving β changes every β-dependent row, on both sides alike
    rows = {row["loss"]: row for row in trl_side_by_side(**batch)}
    halved = {row["loss"]: row for row in trl_side_by_side(**batch | {"beta": 0.05})}
    moved = {name for name in ROWS if abs(halved[name]["trl"] - rows[name]["trl"]) > 1e-4}
    assert moved == DPO_FAMILY - {"IPO (per-token log-probabilities)"} | {"ORPO", "KTO"}
    assert differing(list(halved.values())) == set()


def test_without_trl_says_which_extra(batch, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` then raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[alignment\]"'):
        trl_side_by_side(**batch)

