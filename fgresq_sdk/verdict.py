"""One rule that turns (p_first_better, p_second_better, p_similar) into a verdict, for compare and rank.

The comparison head is not antisymmetric: run on (A, B) and on (B, A) it does not give mirrored answers,
and on two identical images it does not give p_first = p_second. So the SDK's default answer for a pair
is order-symmetrised — the same quantity `rank` uses:
    p_first(A,B)   = ½ (raw_first(A,B) + raw_second(B,A))
    p_second(A,B)  = ½ (raw_second(A,B) + raw_first(B,A))
    p_similar(A,B) = ½ (raw_similar(A,B) + raw_similar(B,A))
so swapping A and B swaps p_first and p_second exactly, and identical content has p_first = p_second.
The verdict is `similar` when the model judges similarity the most likely outcome, or when neither image
is preferred by more than TIE_MARGIN (a near coin flip between "first" and "second" is not a preference,
whatever the similar-probability of a given model); otherwise the image with the larger probability.
"""
from __future__ import annotations

import numpy as np

# The three outcomes of a pair, in the order of the comparison head's logits. Every other name of them is
# derived from this one tuple: the head's logit names (LOGIT_ORDER), the probability keys of `compare`'s JSON
# and of `Comparison` (PROB_KEYS), and the report's wording.
VERDICTS = ("first", "second", "similar")
FIRST, SECOND, SIMILAR = VERDICTS
# "first_better", "second_better", "similar": an image that wins is "better", the tie keeps its name.
LOGIT_ORDER = tuple(v if v == SIMILAR else f"{v}_better" for v in VERDICTS)
# "p_first_better", "p_second_better", "p_similar": a public contract (CLI JSON/CSV, Comparison, C++ CLI).
PROB_KEYS = tuple(f"p_{name}" for name in LOGIT_ORDER)
# |p_first − p_second| below this reads `similar`.
TIE_MARGIN = 0.02


def verdict(p_first: float, p_second: float, p_similar: float) -> str:
    if p_similar >= max(p_first, p_second) or abs(p_first - p_second) < TIE_MARGIN:
        return SIMILAR
    return FIRST if p_first > p_second else SECOND


def similar_mask(p_first: np.ndarray, p_second: np.ndarray, p_similar: np.ndarray) -> np.ndarray:
    """`verdict(...) == "similar"` elementwise (for tiers in rank)."""
    return (p_similar >= np.maximum(p_first, p_second)) | (np.abs(p_first - p_second) < TIE_MARGIN)


def symmetrise(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Order-symmetrised probabilities of (A, B) from raw probs of (A, B) and of (B, A), each [..., 3]."""
    forward, backward = np.asarray(forward, np.float64), np.asarray(backward, np.float64)
    out = np.empty(np.broadcast(forward, backward).shape)
    out[..., 0] = 0.5 * (forward[..., 0] + backward[..., 1])
    out[..., 1] = 0.5 * (forward[..., 1] + backward[..., 0])
    out[..., 2] = 0.5 * (forward[..., 2] + backward[..., 2])
    return out
