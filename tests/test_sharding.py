"""The same global batch gives the same U-Net11 loss and update on 1 and on 8 devices.

Runs in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set before JAX starts).
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from jaxsurg.methods.unet11 import make_train_step
    from jaxsurg.models import UNet11
    from jaxsurg.train import mesh as mesh_lib
    from jaxsurg.train.state import TrainState, adam_with_step_decay

    model = UNet11(num_classes=1, num_filters=8)
    rng = np.random.default_rng(0)
    local = {
        "image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
        "mask": (rng.random((8, 64, 64)) < 0.3).astype(np.uint8),
    }
    local["mask"][0, :4] = 255  # some ignored pixels
    params = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"])  # host copy: steps donate
    tx, _ = adam_with_step_decay(1e-3)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = mesh_lib.make_mesh(devices)
        state = jax.device_put(TrainState.create(params, tx), mesh_lib.replicated(mesh))
        batch = mesh_lib.global_batch(local, mesh)
        assert len(batch["image"].sharding.device_set) == len(devices)
        step = make_train_step(model, 0.3, mesh)
        state, m1 = step(state, batch)
        state, m2 = step(state, batch)
        results.append((float(m1["loss"]), float(m2["loss"]), jax.device_get(state.params)))
    (a1, a2, pa), (b1, b2, pb) = results
    print("losses", a1, a2, b1, b2)
    np.testing.assert_allclose(a1, b1, rtol=1e-5)
    np.testing.assert_allclose(a2, b2, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), pa, pb)
    print("OK")
    """
)


def test_same_global_batch_same_loss_on_1_and_8_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout
