"""Library helpers the pretraining-data and pretraining chapters use to show their results."""

from __future__ import annotations

import numpy as np
import pytest

from llmbook.data.pii import MASK_RE, PII_TYPES, mask_pii, window


def test_mask_re_finds_every_tag_mask_pii_writes() -> None:
    text = "Write to ada@example.org or call +44 20 7946 0958 today."
    masked, counts = mask_pii(text)
    found = [m.group(1) for m in MASK_RE.finditer(masked)]
    assert sorted(found) == sorted(counts.elements()) == ["EMAIL", "PHONE"]
    assert all(MASK_RE.fullmatch(f"<{t}>") for t in PII_TYPES)
    assert MASK_RE.search("a <b>tag</b> that is not a mask") is None


def test_window_shows_the_span_in_context() -> None:
    masked, _ = mask_pii("x" * 100 + " mail ada@example.org now " + "y" * 100)
    m = MASK_RE.search(masked)
    shown = window(masked, m.start(), m.end(), width=6)
    assert shown == "… mail <EMAIL> now y…"  # six characters either side
    assert window("ab<EMAIL>cd", 2, 9, width=10) == "ab<EMAIL>cd"  # nothing cut, no ellipsis
    with pytest.raises(ValueError):
        window("abc", 2, 1)
    with pytest.raises(ValueError):
        window("abc", 0, 1, width=-1)


def test_first_mask_finds_the_span_a_tag_replaced_after_lines_were_removed() -> None:
    from llmbook.data.pii import first_mask

    original = "Host 192.168.10.7 responded.\nWrite to ada@example.org today.\nOr call +44 20 7946 0958."
    masked = mask_pii(original)[0]
    dropped_first_line = masked.split("\n", 1)[1]  # as repeated-line removal would
    tag, span = first_mask(dropped_first_line, original)
    assert tag.group() == "<EMAIL>" and span.type == "EMAIL" and span.value == "ada@example.org"
    assert original[span.start : span.end] == span.value
    tag, span = first_mask(masked, original)
    assert (tag.group(), span.value) == ("<IPV4>", "192.168.10.7")
    assert first_mask("no tags here", original) is None
    with pytest.raises(ValueError):
        first_mask("a line <EMAIL> that masking never wrote", original)
    # a masked line that also stands inside a longer line is matched as the whole line
    shared = "Contact ann@example.com now\nbob@example.org"
    tag, span = first_mask(mask_pii(shared)[0].split("\n", 1)[1], shared)
    assert span.value == "bob@example.org"


def _runs(budgets: int):
    """Noiseless Chinchilla losses (Hoffmann et al.'s fit) of 6 sizes x ``budgets`` budgets."""
    from llmbook.training.scaling import ScalingFit, predict

    true = ScalingFit(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
    N = np.repeat(np.logspace(7, 10, 6), budgets)
    D = np.tile(np.logspace(9, 12, budgets), 6)
    return true, N, D, predict(true, N, D)


def test_fixed_E_holds_E_and_fits_the_rest() -> None:
    from llmbook.training.scaling import FitConfig, fit_scaling_law

    true, N, D, L = _runs(4)
    fit = fit_scaling_law(N, D, L, FitConfig(fixed_E=true.E, n_refine=2))
    assert fit.E == pytest.approx(true.E, rel=1e-12)
    assert fit.alpha == pytest.approx(true.alpha, rel=0.02) and fit.beta == pytest.approx(true.beta, rel=0.02)
    with pytest.raises(ValueError):
        fit_scaling_law(N, D, L, FitConfig(fixed_E=0.0))


def test_profile_E_is_flat_with_two_budgets_and_finds_E_with_four() -> None:
    """Two budgets cannot tell E from the data term: every E below the floor fits as well, and a
    prediction at a sweep budget does not depend on it; four budgets of exact losses pin E down."""
    from llmbook.training.scaling import FitConfig, predict, profile_E

    E_values = np.array([1.2, 0.5, 1.69])  # below the floor E + B / D_max^beta (1.87); any order
    true, N, D, L = _runs(2)
    two = profile_E(N, D, L, E_values, FitConfig(n_refine=1))
    assert [f.E for f in two] == pytest.approx(list(E_values), rel=1e-12)
    assert max(f.objective for f in two) < 1e-9  # all fit the runs exactly
    at_budget = [predict(f, 1e11, D.max()) for f in two]
    assert max(at_budget) - min(at_budget) < 1e-4 * min(at_budget)
    assert len({round(f.beta, 3) for f in two}) == 3  # ... with a different beta each

    true, N, D, L = _runs(4)
    four = profile_E(N, D, L, E_values, FitConfig(n_refine=1))
    best = min(range(3), key=lambda i: four[i].objective)
    assert E_values[best] == true.E and four[best].objective < 1e-9 < min(four[0].objective, four[1].objective)
    with pytest.raises(ValueError):
        profile_E(N, D, L, np.array([1.0, -1.0]))
