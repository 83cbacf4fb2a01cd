"""Laparoflow-SSL's photometric transform P (jaxsurg.methods.laparoflow.photometric): against
a colorsys reference, the paper's ranges (App. B.2) through make_views, and the parameter
checks."""

import colorsys

import jax
import numpy as np
import pytest

from jaxsurg.methods.laparoflow import photometric, views
from jaxsurg.methods.laparoflow.photometric import PhotometricParams

NO_GEOMETRY = dict(max_zoom=1.0, rotate=False, flip=False)


def _np_photometric(rgb, bshift, contrast, sat, hue_turns):
    x = np.clip(np.clip(rgb + bshift, 0, 1) * contrast, 0, 1)
    out = []
    for p in x.reshape(-1, 3).astype(np.float64):
        hh, ss, vv = colorsys.rgb_to_hsv(*p)
        out.append(colorsys.hsv_to_rgb((hh + hue_turns) % 1.0, min(ss * sat, 1.0), vv))
    return np.clip(np.array(out).reshape(rgb.shape), 0, 1)


def test_apply_photometric_matches_colorsys_reference():
    rgb = np.random.default_rng(12).random((2, 5, 4, 3)).astype(np.float32)
    factors = np.array([[0.1, 1.5, 0.5, 10 / 360], [-0.2, 0.4, 1.7, -24 / 360]], np.float32)
    got = np.asarray(photometric.apply_photometric(rgb, factors))
    for b in range(2):
        np.testing.assert_allclose(got[b], _np_photometric(rgb[b], *factors[b]), atol=1e-5)


def test_photometric_draws_respect_the_paper_ranges():
    p = PhotometricParams()
    assert p.brightness == pytest.approx(64 / 255) and p.contrast == (0.25, 1.75)
    assert p.saturation == (0.25, 1.75) and p.hue_degrees == 24.0
    f = np.asarray(jax.jit(jax.vmap(lambda k: photometric.sample_photometric(k, p)))(jax.random.split(jax.random.PRNGKey(0), 4000)))
    lo = np.array([-64 / 255, 0.25, 0.25, -24 / 360])
    hi = -lo * np.array([1, -7, -7, 1])
    assert np.all(f >= lo - 1e-6) and np.all(f <= hi + 1e-6)
    np.testing.assert_allclose(f.min(0), lo, atol=0.01)
    np.testing.assert_allclose(f.max(0), hi, atol=0.01)
    # Brightness only: the image mean moves by at most 64/255, exactly so for mid greys.
    grey = np.full((1, 6, 6, 3), 0.5, np.float32)
    only_b = PhotometricParams(contrast=(1, 1), saturation=(1, 1), hue_degrees=0.0)
    img = np.random.default_rng(13).random((64, 6, 6, 3)).astype(np.float32)
    out = views.make_views(jax.random.PRNGKey(1), img, np.zeros((64, 6, 6, 2), np.float32), np.ones((64, 6, 6), bool),
                           (6, 6), photometric=only_b, **NO_GEOMETRY)
    shift = np.asarray(out["view1"]).mean((1, 2, 3)) - img.mean((1, 2, 3))
    assert np.abs(shift).max() <= 64 / 255 + 1e-5 and np.abs(shift).max() > 0.15
    g = np.asarray(photometric.apply_photometric(grey, np.array([[0.2, 1, 1, 0]], np.float32)))
    np.testing.assert_allclose(g, 0.7, atol=1e-6)
    # Contrast only: a pure multiplication of R, G, B (no mean subtraction).
    dark = img * 0.5
    c = np.asarray(photometric.apply_photometric(dark[:1], np.array([[0.0, 1.6, 1, 0]], np.float32)))
    np.testing.assert_allclose(c, dark[:1] * 1.6, atol=1e-5)
    # P1 and P2 are independent, and independent across the batch.
    v = views.make_views(jax.random.PRNGKey(2), np.repeat(img[:1], 4, 0), np.zeros((4, 6, 6, 2), np.float32),
                         np.ones((4, 6, 6), bool), (6, 6), **NO_GEOMETRY)
    means = np.concatenate([np.asarray(v["view1"]).mean((1, 2)), np.asarray(v["view2"]).mean((1, 2))])
    assert len(np.unique(np.round(means, 5), axis=0)) == 8


def test_photometric_params_validation():
    with pytest.raises(ValueError, match="contrast"):
        PhotometricParams(contrast=(1.5, 0.5))
    with pytest.raises(ValueError, match="brightness"):
        PhotometricParams(brightness=-0.1)
    with pytest.raises(ValueError, match="hue_degrees"):
        PhotometricParams(hue_degrees=-1)
    hash(PhotometricParams())  # static argument of jit
