"""Prior matching for SSD training (qfgaohao/pytorch-ssd ``box_utils.assign_priors`` + ``MatchPrior``).

Every ground-truth box gets the prior that overlaps it best (even below the threshold), then every prior whose
best IoU with some ground truth is >= ``iou_threshold`` takes that ground truth. Matched boxes are encoded as
offsets against their priors with :func:`edge_ssd.model.box.encode_boxes` (the inverse of the decode the
exported model and the device run).
"""

from __future__ import annotations

import numpy as np

from ..model.box import center_to_corner, encode_boxes, iou_of
from ..model.priors import CENTER_VARIANCE, SIZE_VARIANCE


def assign_priors(gt_boxes: np.ndarray, gt_labels: np.ndarray, corner_priors: np.ndarray,
                  iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Match priors to ground truth.

    ``gt_boxes`` (G, 4) corner form, ``gt_labels`` (G,), ``corner_priors`` (P, 4) corner form. Returns the
    matched corner boxes (P, 4) and labels (P,) with 0 (background) for unmatched priors. With no ground truth,
    every prior is background and its box is the prior itself (so it encodes to zeros).
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    corner_priors = np.asarray(corner_priors, np.float32)
    if gt_boxes.shape[0] == 0:
        return corner_priors.copy(), np.zeros(corner_priors.shape[0], np.int64)
    ious = iou_of(gt_boxes[None, :, :], corner_priors[:, None, :])  # (P, G)
    best_target_per_prior = ious.max(axis=1)
    best_target_per_prior_index = ious.argmax(axis=1)
    best_prior_per_target_index = ious.argmax(axis=0)  # (G,)
    for target_index, prior_index in enumerate(best_prior_per_target_index):
        best_target_per_prior_index[prior_index] = target_index
    # 2 > any IoU: the best prior of each target is always matched
    best_target_per_prior[best_prior_per_target_index] = 2.0
    labels = gt_labels[best_target_per_prior_index].copy()
    labels[best_target_per_prior < iou_threshold] = 0
    boxes = gt_boxes[best_target_per_prior_index]
    return boxes, labels


class MatchPrior:
    """Picklable transform: corner GT boxes + labels -> (encoded locations (P, 4), labels (P,))."""

    def __init__(self, center_form_priors: np.ndarray, center_variance: float = CENTER_VARIANCE,
                 size_variance: float = SIZE_VARIANCE, iou_threshold: float = 0.5):
        self.center_form_priors = np.asarray(center_form_priors, np.float32)
        self.corner_form_priors = center_to_corner(self.center_form_priors)
        self.center_variance = float(center_variance)
        self.size_variance = float(size_variance)
        self.iou_threshold = float(iou_threshold)

    def __call__(self, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, labels = assign_priors(gt_boxes, gt_labels, self.corner_form_priors, self.iou_threshold)
        locations = encode_boxes(boxes, self.center_form_priors, self.center_variance, self.size_variance)
        return locations, labels
