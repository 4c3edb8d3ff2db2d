"""MultiBox loss and prior matching on cases computed by hand."""

import math

import numpy as np
import pytest
import torch

from edge_ssd.model.box import center_to_corner, decode_boxes
from edge_ssd.train.loss import MultiboxLoss, hard_negative_mining
from edge_ssd.train.matching import MatchPrior, assign_priors


def _two_class_logits(xs):
    """Logits [0, x] per prior: background loss -log softmax[0] = log(1 + e^x)."""
    return torch.tensor([[[0.0, float(x)] for x in xs]])


def test_loss_all_negatives_selected_hand_computed():
    # 1 positive, 3 negatives, ratio 3: every prior counts
    conf = _two_class_logits([2.0, 1.0, 0.0, -1.0])
    labels = torch.tensor([[1, 0, 0, 0]])
    pred = torch.tensor([[[0.5, 0.0, 2.0, -0.25], [9.0, 9.0, 9.0, 9.0], [0.0] * 4, [0.0] * 4]])
    gt = torch.zeros(1, 4, 4)
    reg, cls = MultiboxLoss(3)(conf, pred, labels, gt)
    # positive: CE with label 1 = -log(e^2 / (1 + e^2)) = log(1 + e^-2); negatives: log(1 + e^x)
    want_cls = math.log(1 + math.exp(-2.0)) + sum(math.log(1 + math.exp(x)) for x in (1.0, 0.0, -1.0))
    # smooth L1 (beta 1) only on the positive: 0.5*0.5^2 + 0 + (2 - 0.5) + 0.5*0.25^2
    want_reg = 0.125 + 0.0 + 1.5 + 0.03125
    assert cls.item() == pytest.approx(want_cls, rel=1e-6)
    assert reg.item() == pytest.approx(want_reg, rel=1e-6)


def test_loss_hard_negative_mining_keeps_the_hardest_three():
    # priors 0 and 1 positive (2 positives -> 6 negatives wanted) in image 0; 1 positive in image 1
    xs0 = [-3.0, 0.5, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -4.0, -5.0]
    xs1 = [1.0, 4.0, -1.0, 0.0, 2.5, -2.0, 3.5, -3.0, 0.2, -0.7]
    conf = torch.cat([_two_class_logits(xs0), _two_class_logits(xs1)])
    labels = torch.zeros(2, 10, dtype=torch.long)
    labels[0, 0] = labels[0, 1] = 1
    labels[1, 0] = 1
    loc = torch.zeros(2, 10, 4)
    reg, cls = MultiboxLoss(3)(conf, loc, labels, loc)
    bg = lambda x: math.log(1 + math.exp(x))  # noqa: E731
    fg = lambda x: math.log(1 + math.exp(-x))  # noqa: E731
    # image 0: positives -3, 0.5; hardest 6 negatives: 3, 2, 1, 0, -1, -2
    total = fg(-3.0) + fg(0.5) + sum(bg(x) for x in (3.0, 2.0, 1.0, 0.0, -1.0, -2.0))
    # image 1: positive 1.0; hardest 3 negatives: 4, 3.5, 2.5
    total += fg(1.0) + sum(bg(x) for x in (4.0, 3.5, 2.5))
    assert cls.item() == pytest.approx(total / 3, rel=1e-6)
    assert reg.item() == 0.0
    mask = hard_negative_mining(-torch.log_softmax(conf, 2)[:, :, 0], labels, 3)
    assert mask[0].tolist() == [True, True, True, True, True, True, True, True, False, False]
    assert mask[1].nonzero().flatten().tolist() == [0, 1, 4, 6]


def test_loss_without_positives_is_finite_and_zero():
    conf = _two_class_logits([1.0, 2.0, 3.0])
    labels = torch.zeros(1, 3, dtype=torch.long)
    reg, cls = MultiboxLoss(3)(conf, torch.zeros(1, 3, 4), labels, torch.zeros(1, 3, 4))
    assert reg.item() == 0.0 and cls.item() == 0.0


def test_loss_gradient_flows_to_both_heads():
    conf = _two_class_logits([0.0, 1.0, -1.0, 2.0]).requires_grad_(True)
    loc = torch.ones(1, 4, 4, requires_grad=True)
    labels = torch.tensor([[1, 0, 0, 0]])
    reg, cls = MultiboxLoss(3)(conf, loc, labels, torch.zeros(1, 4, 4))
    (reg + cls).backward()
    assert conf.grad.abs().sum() > 0
    assert loc.grad[0, 0].abs().sum() > 0 and loc.grad[0, 1:].abs().sum() == 0  # only the positive regresses


# ---------------------------------------------------------------------------------------------- matching

PRIORS_CENTER = np.array([
    [0.25, 0.25, 0.5, 0.5],  # corner (0, 0, 0.5, 0.5)
    [0.75, 0.25, 0.5, 0.5],  # corner (0.5, 0, 1, 0.5)
    [0.25, 0.75, 0.5, 0.5],
    [0.75, 0.75, 0.5, 0.5],
    [0.5, 0.5, 0.2, 0.2],  # small centre prior
], np.float32)


def test_gt_equal_to_a_prior_is_matched_to_it_with_zero_offsets():
    mp = MatchPrior(PRIORS_CENTER, 0.1, 0.2, 0.5)
    gt = center_to_corner(PRIORS_CENTER[[1]])
    locs, labels = mp(gt, np.array([3]))
    assert labels.tolist() == [0, 3, 0, 0, 0]
    np.testing.assert_allclose(locs[1], 0.0, atol=1e-6)
    # decoding the matched offsets gives the GT back
    np.testing.assert_allclose(decode_boxes(locs, PRIORS_CENTER, 0.1, 0.2)[1], gt[0], atol=1e-6)


def test_iou_threshold_behaviour():
    priors = center_to_corner(PRIORS_CENTER)
    # GT (0, 0, 0.5, 0.3125): IoU with prior 0 = 0.625 (>= 0.5, matched), with prior 4 = 0
    # GT2 (0.5, 0.5, 1.0, 0.7): IoU with prior 3 = 0.4 -> below 0.5 but it is GT2's best prior: still matched
    gt = np.array([[0.0, 0.0, 0.5, 0.3125], [0.5, 0.5, 1.0, 0.7]], np.float32)
    boxes, labels = assign_priors(gt, np.array([1, 2]), priors, 0.5)
    assert labels.tolist() == [1, 0, 0, 2, 0]
    np.testing.assert_allclose(boxes[3], gt[1])
    # with a higher threshold the first GT still keeps its best prior; nothing else gets matched
    _, labels = assign_priors(gt, np.array([1, 2]), priors, 0.9)
    assert labels.tolist() == [1, 0, 0, 2, 0]
    # a box overlapping two priors at >= 0.5 matches both
    wide = np.array([[0.0, 0.0, 1.0, 0.5]], np.float32)  # IoU 0.5 with priors 0 and 1 (eps aside)
    _, labels = assign_priors(wide, np.array([4]), priors, 0.49)
    assert labels.tolist() == [4, 4, 0, 0, 0]
    _, labels = assign_priors(wide, np.array([4]), priors, 0.51)
    assert labels.tolist().count(4) == 1  # only its best prior


def test_each_gt_takes_its_best_prior_even_when_another_gt_overlaps_more():
    priors = center_to_corner(PRIORS_CENTER)
    # both GTs overlap prior 0 best; pytorch-ssd gives prior 0 to the later GT, the earlier keeps its ties
    gt = np.array([[0.0, 0.0, 0.45, 0.45], [0.05, 0.05, 0.5, 0.5]], np.float32)
    boxes, labels = assign_priors(gt, np.array([1, 2]), priors, 0.5)
    assert labels[0] == 2 and np.allclose(boxes[0], gt[1])


def test_no_ground_truth_is_all_background():
    mp = MatchPrior(PRIORS_CENTER)
    locs, labels = mp(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    assert labels.tolist() == [0] * 5
    np.testing.assert_allclose(locs, 0.0, atol=1e-6)
