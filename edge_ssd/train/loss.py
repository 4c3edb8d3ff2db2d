"""MultiBox loss (qfgaohao/pytorch-ssd ``nn/multibox_loss.py``): smooth-L1 on the positives' offsets plus
softmax cross-entropy over the positives and the hardest negatives (``neg_pos_ratio`` negatives per positive,
ranked by background loss), both summed and divided by the number of positives in the batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def hard_negative_mining(loss: torch.Tensor, labels: torch.Tensor, neg_pos_ratio: int) -> torch.Tensor:
    """Mask (B, N) of the positives plus, per image, the ``neg_pos_ratio * num_pos`` negatives with the largest
    ``loss`` (the background cross-entropy)."""
    pos_mask = labels > 0
    num_pos = pos_mask.long().sum(dim=1, keepdim=True)
    num_neg = num_pos * neg_pos_ratio
    loss = loss.clone()
    loss[pos_mask] = -math.inf
    _, indexes = loss.sort(dim=1, descending=True)
    _, orders = indexes.sort(dim=1)
    neg_mask = orders < num_neg
    return pos_mask | neg_mask


class MultiboxLoss(nn.Module):
    def __init__(self, neg_pos_ratio: int = 3):
        super().__init__()
        self.neg_pos_ratio = int(neg_pos_ratio)

    def forward(self, confidence: torch.Tensor, predicted_locations: torch.Tensor, labels: torch.Tensor,
                gt_locations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``confidence`` (B, N, C) logits, ``predicted_locations`` (B, N, 4), ``labels`` (B, N) int,
        ``gt_locations`` (B, N, 4). Returns ``(regression_loss, classification_loss)``, each per positive."""
        num_classes = confidence.size(2)
        with torch.no_grad():
            bg_loss = -F.log_softmax(confidence, dim=2)[:, :, 0]
            mask = hard_negative_mining(bg_loss, labels, self.neg_pos_ratio)
        conf = confidence[mask, :]
        classification_loss = F.cross_entropy(conf.reshape(-1, num_classes), labels[mask], reduction="sum")
        pos_mask = labels > 0
        pred = predicted_locations[pos_mask, :].reshape(-1, 4)
        gt = gt_locations[pos_mask, :].reshape(-1, 4)
        smooth_l1_loss = F.smooth_l1_loss(pred, gt, reduction="sum")
        num_pos = max(int(gt.size(0)), 1)
        return smooth_l1_loss / num_pos, classification_loss / num_pos
