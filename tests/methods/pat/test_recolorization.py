"""PAT's recolourisation: the L → ab scaling (against scikit-image, and back), the losses of
Eqs. 1–5 against numpy and their bounds, and the GAN step on tiny modules: D alone learns to
tell real from fake against a fixed G, G alone lowers L_G against a fixed D, and one full
step updates both states, with G's pass scored by the UPDATED D."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsurg.methods.pat.colour_rebalancing import (
    NUM_BINS,
    ab_histograms,
    rebalancing_weights,
    weight_map,
)
from jaxsurg.methods.pat.recolorization import (
    AB_SCALE,
    LossWeights,
    bound_loss_weights,
    create_gan_states,
    discriminator_loss,
    generator_loss,
    lsgan_generator_loss,
    make_gan_step,
    plain_loss,
    rebalanced_loss,
    to_lab_input,
    to_rgb,
)
from jaxsurg.models.discriminators import PatchGAN
from jaxsurg.models.resnet import BatchNorm2d
from jaxsurg.train.mesh import make_mesh
from jaxsurg.train.step import put_replicated

skimage_color = pytest.importorskip("skimage.color")


class TinyGenerator(nn.Module):
    """(N, H, W, 1) → (N, H, W, 2) in (−1, 1), with a BatchNorm and a ``train`` flag."""

    @nn.compact
    def __call__(self, x, *, train):
        y = nn.Conv(8, (3, 3))(x)
        y = nn.relu(BatchNorm2d()(y, use_running_average=not train))
        return jnp.tanh(nn.Conv(2, (3, 3))(y))


class TinyDiscriminator(nn.Module):
    """No BatchNorm and no ``train`` argument: (N, H, W, 3) → (N, H/4, W/4) probabilities."""

    @nn.compact
    def __call__(self, x):
        y = nn.leaky_relu(nn.Conv(8, (4, 4), strides=2)(x), 0.2)
        return nn.sigmoid(nn.Conv(1, (4, 4), strides=2)(y)[..., 0])


def _frames(n=4, size=32, seed=0):
    """Reddish 'tissue' with a grey 'instrument' bar and some noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    f = np.empty((n, size, size, 3), np.float32)
    f[...] = rng.uniform([150, 40, 30], [230, 90, 70], (n, 1, 1, 3))
    f[:, size // 3 : size // 2] = rng.uniform(90, 160, (n, 1, 1, 1))
    f += rng.normal(0, 12, f.shape)
    return np.clip(f, 0, 255).astype(np.uint8)


def _setup(discriminator, seed=0):
    rgb = _frames(seed=seed)
    table = rebalancing_weights(ab_histograms(rgb))
    L, ab = to_lab_input(rgb)
    states = create_gan_states(
        TinyGenerator(), discriminator, jax.random.key(seed, impl="rbg"), (4, 32, 32), optax.adam(3e-3), optax.adam(3e-3)
    )
    return table, {"L": L, "ab": ab}, states


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


# ----------------------------------------------------------------------------- scaling


def test_to_lab_input_matches_skimage_and_to_rgb_inverts_it():
    rgb = _frames(n=2, size=16, seed=3)
    L, ab = to_lab_input(rgb)
    assert L.shape == (2, 16, 16, 1) and ab.shape == (2, 16, 16, 2) and L.dtype == ab.dtype == jnp.float32
    lab = skimage_color.rgb2lab(rgb / 255.0)
    np.testing.assert_allclose(L[..., 0], lab[..., 0] / 50 - 1, atol=1e-3)
    np.testing.assert_allclose(ab, lab[..., 1:] / 110, atol=1e-3)
    assert float(jnp.min(L)) >= -1 and float(jnp.max(L)) <= 1 and float(jnp.max(jnp.abs(ab))) < 1
    np.testing.assert_allclose(to_rgb(L, ab), rgb / 255.0, atol=1e-3)
    np.testing.assert_allclose(to_lab_input(rgb / 255.0)[1], ab, atol=1e-6)  # float input in [0, 1]
    with pytest.raises(ValueError, match="rgb"):
        to_lab_input(rgb[0])
    with pytest.raises(ValueError, match="same pixels"):
        to_rgb(L, ab[:, :8])


# ----------------------------------------------------------------------------- losses


def test_losses_match_numpy_with_gradients_and_bounds():
    rng = np.random.default_rng(0)
    n, h, w = 3, 5, 7
    pred, true = rng.uniform(-1, 1, (2, n, h, w, 2)).astype(np.float32)
    weights = rng.uniform(0.2, 4.0, (n, h, w, 2)).astype(np.float32)
    d_fake, d_real = rng.uniform(0, 1, (2, n, 4, 4)).astype(np.float32)

    np.testing.assert_allclose(lsgan_generator_loss(d_fake), np.mean((d_fake - 1) ** 2), rtol=1e-6)  # Eq. 2
    np.testing.assert_allclose(
        discriminator_loss(d_real, d_fake), np.mean((d_real - 1) ** 2) + np.mean(d_fake**2), rtol=1e-6
    )  # Eq. 5
    per_image = [2 / (h * w) * sum(np.sum(((pred[i, ..., c] - true[i, ..., c]) * weights[i, ..., c]) ** 2) for c in (0, 1)) for i in range(n)]
    np.testing.assert_allclose(rebalanced_loss(pred, true, weights), np.mean(per_image), rtol=1e-5)  # Eq. 3
    per_image = [np.sum(np.linalg.norm(pred[i] - true[i], axis=-1) ** 2) / (h * w) for i in range(n)]
    np.testing.assert_allclose(plain_loss(pred, true), np.mean(per_image), rtol=1e-5)  # Eq. 4
    lw = LossWeights(0.7, 0.2, 0.1)
    total, terms = generator_loss(d_fake, pred, true, weights, lw)  # Eq. 1
    assert set(terms) == {"g_adv", "g_rebalanced", "g_plain"}
    np.testing.assert_allclose(
        total, 0.7 * terms["g_adv"] + 0.2 * terms["g_rebalanced"] + 0.1 * terms["g_plain"], rtol=1e-6
    )

    g = jax.grad(rebalanced_loss)(jnp.asarray(pred), true, weights)
    np.testing.assert_allclose(g, 2 / (h * w) * 2 * (pred - true) * weights**2 / n, rtol=1e-4, atol=1e-7)
    g = jax.grad(lambda d: lsgan_generator_loss(d))(jnp.asarray(d_fake))
    np.testing.assert_allclose(g, 2 * (d_fake - 1) / d_fake.size, rtol=1e-5)

    # The bound-based γ, λ, φ: the worst case (D(Î) = 0, â = −a = ∓1, every P = P_max) scores 1 each.
    table = rng.uniform(0.1, 3.0, (2, NUM_BINS)).astype(np.float32)
    table[1, 7] = 5.0
    lw = bound_loss_weights(table)
    assert lw == LossWeights(1.0, 1 / (16 * 25.0), 1 / 8)
    worst_true = np.ones((n, h, w, 2), np.float32)
    _, terms = generator_loss(np.zeros((n,)), -worst_true, worst_true, np.full((n, h, w, 2), 5.0, np.float32), lw)
    scaled = [lw.gamma * terms["g_adv"], lw.lam * terms["g_rebalanced"], lw.phi * terms["g_plain"]]
    np.testing.assert_allclose(scaled, [1.0, 1.0, 1.0], rtol=1e-6)
    _, terms = generator_loss(d_fake, pred, true, np.asarray(weight_map(true * AB_SCALE, table)), lw)
    assert 0 <= lw.lam * terms["g_rebalanced"] <= 1 and 0 <= lw.phi * terms["g_plain"] <= 1

    with pytest.raises(ValueError, match=r"\(N, H, W, 2\)"):
        plain_loss(pred, true[:, :4])
    with pytest.raises(ValueError, match="weights"):
        rebalanced_loss(pred, true, weights[..., :1])
    with pytest.raises(ValueError, match="positive"):
        bound_loss_weights(np.zeros((2, NUM_BINS)))


# ----------------------------------------------------------------------------- GAN step


def test_discriminator_alone_learns_real_from_fake():
    d = TinyDiscriminator()  # no BatchNorm, no train argument
    table, batch, states = _setup(d)
    g_before = _host(states["generator"])
    step = make_gan_step(TinyGenerator(), d, table, make_mesh(), updates=("discriminator",))
    states = put_replicated(states, make_mesh())
    history = []
    for _ in range(15):
        states, m = step(states, batch)
        history.append({k: float(v) for k, v in m.items()})
    first, last = history[0], history[-1]
    assert last["d_loss"] < 0.5 * first["d_loss"]
    assert last["d_real"] - last["d_fake"] > first["d_real"] - first["d_fake"] + 0.3
    assert int(states["discriminator"].step) == 15 and int(states["generator"].step) == 0
    after = _host(states["generator"])
    for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(g_before)):
        np.testing.assert_array_equal(a, b)  # G fixed: its params and BN statistics unchanged
    assert history[-1]["g_adv"] > history[0]["g_adv"]  # the fixed G fools the better D less


def test_generator_alone_lowers_its_loss_against_a_fixed_discriminator():
    d = PatchGAN(ndf=4)  # BatchNorm, scored in eval mode in G's pass
    table, batch, states = _setup(d, seed=1)
    d_before = _host(states["discriminator"])
    step = make_gan_step(TinyGenerator(), d, table, make_mesh(), updates=("generator",), discriminator_mode="eval")
    states = put_replicated(states, make_mesh())
    losses = []
    for _ in range(15):
        states, m = step(states, batch)
        losses.append(float(m["g_loss"]))
    assert losses[-1] < 0.9 * losses[0] and losses[-1] == min(losses) and np.all(np.isfinite(losses))
    assert int(states["generator"].step) == 15 and int(states["discriminator"].step) == 0
    for a, b in zip(jax.tree_util.tree_leaves(_host(states["discriminator"])), jax.tree_util.tree_leaves(d_before)):
        np.testing.assert_array_equal(a, b)


def test_one_full_step_updates_both_and_scores_g_with_the_updated_d():
    g, d = TinyGenerator(), PatchGAN(ndf=4)  # D's BatchNorm in train mode (the default) for G's pass
    table, batch, states = _setup(d, seed=2)
    before = _host(states)
    step = make_gan_step(g, d, table, make_mesh())
    new, m = step(put_replicated(states, make_mesh()), batch)
    m = {k: float(v) for k, v in m.items()}
    assert set(m) == {"loss", "d_loss", "d_real", "d_fake", "g_loss", "g_adv", "g_rebalanced", "g_plain"}
    assert all(np.isfinite(list(m.values()))) and m["loss"] == m["g_loss"]
    assert int(new["generator"].step) == 1 and int(new["discriminator"].step) == 1
    after = _host(new)
    for name in ("generator", "discriminator"):
        for coll in ("params", "batch_stats"):
            changed = [np.any(a != b) for a, b in zip(jax.tree_util.tree_leaves(getattr(after[name], coll)),
                                                     jax.tree_util.tree_leaves(getattr(before[name], coll)))]
            assert all(changed), (name, coll)

    # Recompute the metrics outside the step: D's on the old D, G's adversarial term on the NEW D.
    def d_train(state, x):
        return d.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"])[0]

    @jax.jit
    def reference(before, after, L, ab):
        gv = {"params": before["generator"].params, "batch_stats": before["generator"].batch_stats}
        fake_ab, _ = g.apply(gv, L, train=True, mutable=["batch_stats"])
        real, fake = jnp.concatenate([L, ab], -1), jnp.concatenate([L, fake_ab], -1)
        old_d, new_d = before["discriminator"], after["discriminator"]
        g_loss, _ = generator_loss(d_train(new_d, fake), fake_ab, ab, weight_map(ab * AB_SCALE, table), bound_loss_weights(table))
        return {
            "d_loss": discriminator_loss(d_train(old_d, real), d_train(old_d, fake)),
            "d_real": jnp.mean(d_train(old_d, real)),
            "g_adv": lsgan_generator_loss(d_train(new_d, fake)),
            "g_adv_old_d": lsgan_generator_loss(d_train(old_d, fake)),
            "g_loss": g_loss,
        }

    want = {k: float(v) for k, v in reference(before, after, batch["L"], batch["ab"]).items()}
    for k in ("d_loss", "d_real", "g_adv", "g_loss"):
        np.testing.assert_allclose(m[k], want[k], rtol=1e-5, err_msg=k)
    assert abs(m["g_adv"] - want["g_adv_old_d"]) > 1e-4  # the old D would have scored differently


def test_make_gan_step_errors():
    table = np.ones((2, NUM_BINS), np.float32)
    g, d, mesh = TinyGenerator(), TinyDiscriminator(), make_mesh()
    with pytest.raises(ValueError, match="updates"):
        make_gan_step(g, d, table, mesh, updates=())
    with pytest.raises(ValueError, match="updates"):
        make_gan_step(g, d, table, mesh, updates=("critic",))
    with pytest.raises(ValueError, match="discriminator_mode"):
        make_gan_step(g, d, table, mesh, discriminator_mode="frozen")
    with pytest.raises(ValueError, match="weights_table"):
        make_gan_step(g, d, table[:, :10], mesh)
