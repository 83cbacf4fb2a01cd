"""SegFormer-B0 (MiT encoder + all-MLP decoder) against Hugging Face transformers, and its loader.

The reference is a randomly initialised ``transformers`` SegFormer (B0 sizes) run by torch on
CPU in eval mode; its weights go through files (safetensors via ``save_pretrained``, which
writes the hub's original key names, and a ``torch.save`` state dict with the
transformers-5 names) and ``load_segformer``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference SegFormer runs in PyTorch")
transformers = pytest.importorskip("transformers", reason="the reference SegFormer is Hugging Face's")
pytest.importorskip("safetensors", reason="the checkpoints are written as safetensors")

from jaxsurg.methods.laparoflow.hf_segformer import load_segformer
from jaxsurg.methods.laparoflow.segformer import MiTEncoder, SegFormer, segformer, segformer_b0
from jaxsurg.models.vgg import IMAGENET_MEAN, IMAGENET_STD

B, H, W = 2, 72, 104  # non-square, not a multiple of 32 in W (104 = 3·32 + 8)
ATOL = 1e-4


def _randomize(model, seed: int) -> None:
    """Random weights (σ = 1/√fan_in), biases, norm affines and BN statistics: every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif t.ndim == 1:
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            else:  # O(1) activations (HF's σ = 0.02 init would hide e.g. a tanh-approximated GELU)
                fan_in = int(np.prod(t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)


def _config():
    # Defaults are MiT-B0: hidden sizes (32, 64, 160, 256), depths 2, heads (1, 2, 5, 8), sr (8, 4, 2, 1).
    cfg = transformers.SegformerConfig(num_labels=256, decoder_hidden_size=256)
    cfg._attn_implementation = "eager"
    return cfg


def _images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 1.0, (B, H, W, 3)).astype(np.float32)


def _torch_input(x: np.ndarray):
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _abstract(model, x):
    return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.asarray(x)))


def _placeholder(model, x, seed: int = 3):
    """Concrete random variables of ``model``'s structure (cheaper than an eager ``init``)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), _abstract(model, x))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Reference models, their files and their outputs on the test images."""
    tmp = tmp_path_factory.mktemp("segformer")
    torch.manual_seed(0)
    cfg = _config()
    seg = transformers.SegformerForSemanticSegmentation(cfg).eval()
    enc = transformers.SegformerModel(cfg).eval()
    _randomize(seg, 1)
    _randomize(enc, 2)
    seg.save_pretrained(tmp / "seg")  # hub (transformers-4) key names
    torch.save(seg.state_dict(), tmp / "seg.bin")  # transformers-5 key names, segformer.* prefix
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp / "enc.safetensors"))
    torch.save(enc.state_dict(), tmp / "enc.pt")
    x = _images()
    with torch.no_grad():
        seg_out = seg(pixel_values=_torch_input(x), output_hidden_states=True)
        enc_out = enc(pixel_values=_torch_input(x), output_hidden_states=True)
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
    return {
        "tmp": tmp, "x": x, "seg": seg, "enc": enc,
        "seg_logits": nhwc(seg_out.logits), "seg_stages": [nhwc(h) for h in seg_out.hidden_states],
        "enc_stages": [nhwc(h) for h in enc_out.hidden_states],
    }


# ----------------------------------------------------------------------------- equivalence

_B0 = SegFormer(normalize=False)


@jax.jit
def _forward(variables, x):
    """B0 decoder logits and the four encoder stage outputs (compiled once for all tests)."""
    logits, inter = _B0.apply(variables, x, capture_intermediates=lambda m, _: isinstance(m, MiTEncoder))
    return logits, inter["intermediates"]["encoder"]["__call__"][0]


def test_encoder_stages_match_hf_segformer_model(hf):
    x = hf["x"]
    decoder_placeholder = _placeholder(_B0, x)
    for f in ("enc.safetensors", "enc.pt"):
        variables = load_segformer(hf["tmp"] / f, decoder_placeholder)
        _, stages = _forward(variables, jnp.asarray(x))
        assert [s.shape for s in stages] == [r.shape for r in hf["enc_stages"]]
        assert [s.shape[1:3] for s in stages] == [(18, 26), (9, 13), (5, 7), (3, 4)]
        for i, (s, r) in enumerate(zip(stages, hf["enc_stages"])):
            assert s.dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(s), r, atol=ATOL, rtol=1e-4, err_msg=f"{f} stage {i}")
        # The same checkpoint into a bare MiTEncoder gives the same leaves (no 'encoder' level).
        bare = load_segformer(hf["tmp"] / f, _abstract(MiTEncoder(), x))
        jax.tree_util.tree_map(np.testing.assert_array_equal, bare["params"], variables["params"]["encoder"])
    assert MiTEncoder().stage_shapes(H, W) == [(18, 26), (9, 13), (5, 7), (3, 4)]


def test_segformer_logits_and_stages_match_hf_semantic_segmentation(hf):
    x = hf["x"]
    from_hub_names = load_segformer(hf["tmp"] / "seg" / "model.safetensors", _abstract(_B0, x))
    from_state_dict = load_segformer(hf["tmp"] / "seg.bin", _abstract(_B0, x))
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_hub_names, from_state_dict)
    logits, stages = _forward(from_hub_names, jnp.asarray(x))
    assert logits.dtype == jnp.float32 and logits.shape == (B, 18, 26, 256) == hf["seg_logits"].shape
    np.testing.assert_allclose(np.asarray(logits), hf["seg_logits"], atol=ATOL, rtol=1e-4)
    for s, r in zip(stages, hf["seg_stages"]):
        np.testing.assert_allclose(np.asarray(s), r, atol=ATOL, rtol=1e-4)
    # The encoder part of a SegformerForSemanticSegmentation file into a bare MiTEncoder is refused.
    with pytest.raises(ValueError, match="decode_head"):
        load_segformer(hf["tmp"] / "seg.bin", _abstract(MiTEncoder(), x))


def test_parameter_count_equals_torch(hf):
    x = hf["x"][:1]
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))
    assert count(_abstract(SegFormer(), x)["params"]) == sum(p.numel() for p in hf["seg"].parameters()) == 3_779_936
    assert count(_abstract(MiTEncoder(), x)["params"]) == sum(p.numel() for p in hf["enc"].parameters())


def test_encoder_only_checkpoint_keeps_decoder(hf):
    model = segformer_b0(normalize=False)
    x = jnp.asarray(hf["x"][:1, :32, :32])
    init = _placeholder(model, x)
    loaded = load_segformer(hf["tmp"] / "enc.safetensors", init)
    np.testing.assert_array_equal(
        loaded["params"]["decode_head"]["classifier"]["kernel"], init["params"]["decode_head"]["classifier"]["kernel"]
    )
    np.testing.assert_array_equal(
        loaded["params"]["encoder"]["stage_3"]["blocks_1"]["mlp"]["fc2"]["kernel"],
        hf["enc"].state_dict()["stages.3.blocks.1.mlp.fc2.weight"].numpy().T,
    )
    with pytest.raises(ValueError, match="abstract"):  # the decoder cannot be made up
        load_segformer(hf["tmp"] / "enc.safetensors", _abstract(model, x))


# ----------------------------------------------------------------------------- loader errors


def test_loader_errors_name_the_key(hf):
    sd = {k: v.numpy() for k, v in hf["seg"].state_dict().items()}
    abstract = _abstract(SegFormer(), hf["x"][:1])
    key = "segformer.stages.1.blocks.0.attention.q_proj.weight"
    bad = dict(sd, **{key: np.zeros((64, 65), np.float32)})
    with pytest.raises(ValueError, match=r"stages\.1\.blocks\.0\.attention\.q_proj\.weight.*\(64, 65\).*\(64, 64\)"):
        load_segformer(bad, abstract)
    missing = {k: v for k, v in sd.items() if k != "segformer.stages.2.layer_norm.bias"}
    with pytest.raises(ValueError, match=r"missing key 'stages\.2\.layer_norm\.bias'"):
        load_segformer(missing, abstract)
    extra = dict(sd, **{"segformer.stages.4.layer_norm.bias": np.zeros(8, np.float32)})
    with pytest.raises(ValueError, match=r"stages\.4\.layer_norm\.bias"):
        load_segformer(extra, abstract)
    # A file path appears in the message; a 150-class decoder asks for out_dim or load_classifier.
    torch.save({k: (torch.zeros(150, 256, 1, 1) if k == "decode_head.classifier.weight" else
                    torch.zeros(150) if k == "decode_head.classifier.bias" else v)
                for k, v in hf["seg"].state_dict().items()}, hf["tmp"] / "ade.bin")
    with pytest.raises(ValueError, match=r"ade\.bin.*decode_head\.classifier\.(weight|bias).*num_labels=150"):
        load_segformer(hf["tmp"] / "ade.bin", abstract)
    init = _placeholder(SegFormer(), hf["x"][:1])
    kept = load_segformer(hf["tmp"] / "ade.bin", init, load_classifier=False)
    np.testing.assert_array_equal(kept["params"]["decode_head"]["classifier"]["bias"],
                                  init["params"]["decode_head"]["classifier"]["bias"])
    np.testing.assert_array_equal(kept["batch_stats"]["decode_head"]["batch_norm"]["var"],
                                  sd["decode_head.batch_norm.running_var"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        _abstract(MiTEncoder(), np.zeros((1, 64, 64, 4), np.float32))
    with pytest.raises(ValueError, match="too small"):
        _abstract(SegFormer(), np.zeros((1, 24, 64, 3), np.float32))
    with pytest.raises(ValueError, match="variant='b9'"):
        segformer("b9")
    assert segformer_b0(out_dim=8).out_dim == 8 and segformer_b0().embed_dims == (32, 64, 160, 256)


# ----------------------------------------------------------------------------- training


def test_train_step_jit_grad_finite_and_unit_norm_output(tmp_path):
    # A small MiT (one block per stage, narrow) from a random HF model keeps compilation short
    # and exercises non-B0 sizes through the loader; same code path as B0.
    sizes = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 2, 3, 4],
                 "decoder_hidden_size": 16, "num_labels": 12}
    torch.manual_seed(1)
    ref = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(**sizes)).eval()
    _randomize(ref, 3)
    model = SegFormer(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), decoder_dim=16,
                      out_dim=12, drop_path=0.5, dropout=0.1)
    x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (2, 32, 40, 3)).astype(np.float32))
    variables = load_segformer({k: v.numpy() for k, v in ref.state_dict().items()}, _abstract(model, x))

    @jax.jit
    def step(params, batch_stats, rng):
        def loss_fn(p):
            z, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                 rngs={"dropout": rng}, mutable=["batch_stats"])
            return jnp.sum(z[..., 0] * jnp.arange(z.shape[2])), (z, upd)
        return jax.grad(loss_fn, has_aux=True)(params)

    grads, (z, upd) = step(variables["params"], variables["batch_stats"], jax.random.PRNGKey(1))
    assert z.shape == (2, 8, 10, 12) and z.dtype == jnp.float32
    # normalize=True (default): unit L2 norm along the representation axis.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=-1), 1.0, atol=1e-5)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    assert len(flat) == len(jax.tree_util.tree_leaves(variables["params"]))
    for path, g in flat:
        assert np.all(np.isfinite(np.asarray(g))), jax.tree_util.keystr(path)
    # Almost every parameter gets a gradient (drop-path may zero a whole branch of one sample).
    assert sum(float(jnp.abs(g).sum()) > 0 for _, g in flat) >= 0.9 * len(flat)
    # BatchNorm running statistics moved (momentum 0.1) away from the loaded ones.
    old = variables["batch_stats"]["decode_head"]["batch_norm"]["mean"]
    assert not np.allclose(upd["batch_stats"]["decode_head"]["batch_norm"]["mean"], old)


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = SegFormer(dtype=jnp.bfloat16)
    x = jnp.zeros((1, 64, 96, 3), jnp.float32)
    variables = _abstract(model, x)
    assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert out.shape == (1, 16, 24, 256) and out.dtype == jnp.float32
    stages = jax.eval_shape(lambda v: MiTEncoder(dtype=jnp.bfloat16).apply(v, x), _abstract(MiTEncoder(), x))
    assert [s.dtype for s in stages] == [jnp.float32] * 4
