"""Training losses: batch-hard triplet (Hermans et al. 2017, paper 001 ref. [31]) + cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows of ``emb`` (N, D) -> (N, N), numerically safe at 0."""
    sq = emb.square().sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T).clamp_min(0.0)
    # sqrt has an infinite gradient at 0: add a tiny epsilon only where needed.
    zero = d2 <= 1e-12
    return torch.where(zero, torch.zeros_like(d2), (d2 + zero.float() * 1e-12).sqrt())


def batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Mean over anchors of relu(hardest positive distance - hardest negative distance + margin).

    Anchors with no positive or no negative in the batch are skipped (with P x K batches, K >= 2
    and P >= 2, every anchor has both). Returns 0 (with a gradient path) when no anchor is valid.
    """
    d = pairwise_distances(emb.float())
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not bool(valid.any()):
        return emb.sum() * 0.0
    hardest_pos = torch.where(pos_mask, d, torch.zeros_like(d)).max(1).values
    hardest_neg = torch.where(neg_mask, d, torch.full_like(d, float("inf"))).min(1).values
    loss = F.relu(hardest_pos - hardest_neg + margin)
    return loss[valid].mean()


@dataclass
class LossParts:
    total: torch.Tensor
    ce: float
    triplet: float


def combined_loss(logits: torch.Tensor | None, emb: torch.Tensor, labels: torch.Tensor, *,
                  ce_weight: float = 1.0, triplet_weight: float = 1.0, margin: float = 0.3) -> LossParts:
    """Paper 001 / 000: CE over synthetic model ids + batch-hard triplet, equal weights by default."""
    total = emb.new_zeros(())
    ce_v = tri_v = 0.0
    if ce_weight > 0 and logits is not None:
        ce = F.cross_entropy(logits.float(), labels)
        total = total + ce_weight * ce
        ce_v = float(ce.detach())
    if triplet_weight > 0:
        tri = batch_hard_triplet(emb, labels, margin)
        total = total + triplet_weight * tri
        tri_v = float(tri.detach())
    return LossParts(total, ce_v, tri_v)
