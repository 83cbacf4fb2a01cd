"""Losses and metrics on hand-computed cases, including the empty-mask conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg import metrics
from jaxsurg.losses import cross_entropy, ternaus_loss


def test_binary_ternaus_loss_hand_computed():
    # Zero logits: p = 0.5 everywhere; 3 valid pixels (one ignored), 2 of them positive.
    logits = jnp.zeros((1, 2, 2, 1))
    labels = jnp.array([[[0, 1], [255, 1]]])
    ce = np.log(2.0)
    iou = (2 * 0.5) / (3 * 0.5 + 2 - 2 * 0.5)  # 1.0 / 2.5
    expected = 0.7 * ce - 0.3 * np.log(iou)
    np.testing.assert_allclose(ternaus_loss(logits, labels), expected, rtol=1e-6)
    np.testing.assert_allclose(ternaus_loss(logits, labels, jaccard_weight=0.0), ce, rtol=1e-6)


def test_multiclass_ternaus_loss_hand_computed():
    # Two pixels, three classes, known logits.
    logits = jnp.array([[[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]]])
    labels = jnp.array([[[0, 2]]])
    p = np.asarray(jax.nn.softmax(logits, -1))[0, 0]
    ce = -(np.log(p[0, 0]) + np.log(p[1, 2])) / 2
    loss = 0.7 * ce
    for c in range(3):
        t = (np.array([0, 2]) == c).astype(float)
        inter = (p[:, c] * t).sum()
        loss -= 0.3 * np.log((inter + 1e-15) / (p[:, c].sum() + t.sum() - inter + 1e-15))
    np.testing.assert_allclose(ternaus_loss(logits, labels), loss, rtol=1e-5)


def test_binary_cross_entropy_matches_definition_and_gradient():
    key = jax.random.PRNGKey(0)
    z = jax.random.normal(key, (2, 3, 4, 1)) * 3
    y = jax.random.bernoulli(key, 0.4, (2, 3, 4)).astype(jnp.int32)
    p = jax.nn.sigmoid(z[..., 0])
    expected = -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))
    np.testing.assert_allclose(cross_entropy(z, y), expected, rtol=1e-5)
    # d/dz BCE = (sigmoid(z) - y) / N
    g = jax.grad(cross_entropy)(z, y)[..., 0]
    np.testing.assert_allclose(g, (p - y) / y.size, atol=1e-6)


def test_ternaus_loss_decreases_under_gradient_descent():
    labels = jnp.array([[[0, 1, 1, 0], [1, 1, 0, 0]]])
    logits = jnp.zeros((1, 2, 4, 1))
    grad = jax.jit(jax.grad(ternaus_loss))
    losses = []
    for _ in range(50):
        losses.append(float(ternaus_loss(logits, labels)))
        logits = logits - 10.0 * grad(logits, labels)
    assert losses[-1] < 0.2 * losses[0]


def _counts(pred, target, c):
    return jax.tree.map(np.asarray, metrics.confusion_counts(jnp.asarray(pred), jnp.asarray(target), c))


def test_binary_frame_scores_and_empty_conventions():
    target = np.array([
        [[1, 1, 0, 0]],  # 2 positives
        [[0, 0, 0, 0]],  # empty ground truth, empty prediction -> 1
        [[0, 0, 0, 0]],  # empty ground truth, one false positive -> ~0
        [[1, 255, 0, 0]],  # ignored pixel predicted positive does not count
    ])
    pred = np.array([
        [[1, 0, 1, 0]],  # TP 1, FP 1, FN 1 -> IoU 1/3, Dice 1/2
        [[0, 0, 0, 0]],
        [[0, 1, 0, 0]],
        [[1, 1, 0, 0]],  # -> IoU 1, Dice 1
    ])
    s = metrics.frame_scores(_counts(pred, target, 2))
    np.testing.assert_allclose(s["iou"], [1 / 3, 1.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(s["dice"], [0.5, 1.0, 0.0, 1.0], atol=1e-12)
    summary = metrics.summarize(_counts(pred, target, 2), ("background", "instrument"))
    assert summary.num_frames == 4
    np.testing.assert_allclose(summary.iou_mean, np.mean([1 / 3, 1, 0, 1]))
    np.testing.assert_allclose(summary.iou_std, np.std([1 / 3, 1, 0, 1]))
    # Per class: instrument averaged over the 2 frames that contain it.
    np.testing.assert_allclose(summary.per_class["instrument"]["iou"], (1 / 3 + 1) / 2)
    assert summary.per_class["instrument"]["frames"] == 2


def test_multiclass_frame_scores_average_present_classes():
    target = np.array([
        [[1, 1, 2, 2, 0, 0]],   # classes 1 and 2 present
        [[0, 0, 0, 0, 0, 0]],   # empty, prediction has class 3 -> 0
        [[0, 0, 0, 0, 0, 0]],   # empty, empty prediction -> 1
    ])
    pred = np.array([
        [[1, 1, 1, 2, 3, 0]],   # class 1: I=2, U=3 -> 2/3; class 2: I=1, U=2 -> 1/2; class 3 absent from GT
        [[0, 0, 3, 0, 0, 0]],
        [[0, 0, 0, 0, 0, 0]],
    ])
    s = metrics.frame_scores(_counts(pred, target, 4))
    np.testing.assert_allclose(s["iou"], [(2 / 3 + 1 / 2) / 2, 0.0, 1.0])
    np.testing.assert_allclose(s["dice"], [(0.8 + 2 / 3) / 2, 0.0, 1.0])
    summary = metrics.summarize(_counts(pred, target, 4), ("bg", "a", "b", "c"))
    assert summary.per_class["c"]["iou"] is None
    np.testing.assert_allclose(summary.per_class["a"]["dice"], 0.8)


def test_predict_classes_thresholds_at_half():
    logits = jnp.array([[[[-0.1], [0.1]]]])
    np.testing.assert_array_equal(metrics.predict_classes(logits), [[[0, 1]]])


def test_summarize_rejects_bad_input():
    counts = _counts(np.zeros((1, 1, 2), int), np.zeros((1, 1, 2), int), 2)
    with pytest.raises(ValueError, match="class names"):
        metrics.summarize(counts, ("only-one",))


def test_binary_cross_entropy_gradient_at_zero_logit_is_sigmoid_minus_target():
    labels = jnp.array([[[1, 0]]], jnp.int32)
    grad = jax.grad(lambda z: cross_entropy(z, labels))(jnp.zeros((1, 1, 2, 1)))
    np.testing.assert_allclose(np.asarray(grad)[0, 0, :, 0], [(0.5 - 1) / 2, (0.5 - 0) / 2], rtol=1e-6)
