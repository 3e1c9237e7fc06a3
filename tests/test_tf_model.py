"""The TF MaskFormer: shapes of every block and the full model, XLA, SavedModel, input errors, configs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import converted_tf_model, padded, stride_sizes

from tf_maskformer.configs.maskformer import MaskFormerModel
from tf_maskformer.modeling.backbone import ResNet
from tf_maskformer.modeling.factory import build_maskformer
from tf_maskformer.modeling.inference import postprocess
from tf_maskformer.modeling.maskformer_model import InputError, MaskFormer
from tf_maskformer.modeling.pixel_decoder import build_pixel_decoder
from tf_maskformer.modeling.transformer_predictor import TransformerPredictor
from tf_maskformer.serving.export import export_saved_model
from torch_reference.maskformer import MaskFormer as TorchMaskFormer
from torch_reference.presets import PRESETS
from torch_reference.synthetic_images import synthetic_images

SIZES = [(512, 512), (480, 640)]
CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("batch", [1, 2])
def test_backbone_shapes(height, width, batch):
    features = ResNet((3, 4, 6, 3))(tf.zeros([batch, height, width, 3]))
    hs, ws = stride_sizes(height), stride_sizes(width)
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        k: (batch, hs[k], ws[k], CHANNELS[k]) for k in CHANNELS}


def _features(batch: int, height: int, width: int) -> dict[str, tf.Tensor]:
    hs, ws = stride_sizes(height), stride_sizes(width)
    return {k: tf.random.normal([batch, hs[k], ws[k], c]) for k, c in CHANNELS.items()}


@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r50_6enc_coco_panoptic"])
@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("batch", [1, 2])
def test_pixel_decoder_and_predictor_shapes(preset_name, height, width, batch):
    preset = PRESETS[preset_name]
    features = _features(batch, height, width)
    mask_features, encoder_output = build_pixel_decoder(preset)(features)
    hs, ws = stride_sizes(height), stride_sizes(width)
    assert tuple(mask_features.shape) == (batch, hs["res2"], ws["res2"], 256)
    if preset.pixel_decoder == "transformer_encoder":
        assert tuple(encoder_output.shape) == (batch, hs["res5"], ws["res5"], 256)
        predictor_input = encoder_output
    else:
        assert encoder_output is None
        predictor_input = features["res5"]
    out = TransformerPredictor(preset)(predictor_input, mask_features)
    assert tuple(out["pred_logits"].shape) == (batch, 100, preset.num_classes + 1)
    assert tuple(out["pred_masks"].shape) == (batch, 100, hs["res2"], ws["res2"])
    assert tuple(out["layer_logits"].shape) == (6, batch, 100, preset.num_classes + 1)
    assert tuple(out["layer_masks"].shape) == (6, batch, 100, hs["res2"], ws["res2"])


@pytest.fixture(scope="module")
def tf_models():
    return {name: build_maskformer(name) for name in ("r50_ade20k", "r50_6enc_coco_panoptic")}


@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r50_6enc_coco_panoptic"])
@pytest.mark.parametrize("height, width", [(512, 512), (480, 640), (475, 633)])
@pytest.mark.parametrize("batch", [1, 2])
def test_full_model_shapes(tf_models, preset_name, height, width, batch):
    model = tf_models[preset_name]
    images = tf.random.uniform([batch, height, width, 3], 0, 255)
    divisor = model.preset.size_divisibility
    inputs = model.preprocess(images)
    assert tuple(inputs.shape) == (batch, padded(height, divisor), padded(width, divisor), 3)
    out = model(inputs)
    hs, ws = stride_sizes(padded(height, divisor)), stride_sizes(padded(width, divisor))
    assert tuple(out["pred_logits"].shape) == (batch, 100, model.preset.num_classes + 1)
    assert tuple(out["pred_masks"].shape) == (batch, 100, hs["res2"], ws["res2"])
    assert out["layer_logits"].shape[0] == 6


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_parameter_count_equals_pytorch_preset(preset_name):
    model = build_maskformer(preset_name)
    tf_count = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    torch_count = sum(p.numel() for p in TorchMaskFormer(PRESETS[preset_name]).parameters())
    assert tf_count == torch_count
    # Frozen BN lives in non-trainable variables, four per norm, never updated by training.
    frozen = [v for v in model.non_trainable_variables]
    assert frozen and all("/norm/" in v.name for v in frozen)


def test_variables_are_named_after_original_module_paths(tf_models):
    names = {v.name for v in tf_models["r50_6enc_coco_panoptic"].variables}
    for expected in ("maskformer/backbone/res3/0/conv2/kernel:0",
                     "maskformer/backbone/res3/0/conv2/norm/running_var:0",
                     "maskformer/sem_seg_head/pixel_decoder/adapter_1/norm/gamma:0",
                     "maskformer/sem_seg_head/pixel_decoder/transformer/encoder/layers/5/self_attn/query/bias:0",
                     "maskformer/sem_seg_head/predictor/transformer/decoder/layers/0/multihead_attn/key/kernel:0",
                     "maskformer/sem_seg_head/predictor/query_embed/embeddings:0",
                     "maskformer/sem_seg_head/predictor/class_embed/kernel:0"):
        assert expected in names


def test_xla_forward_and_postprocess_equal_eager(seeded_checkpoint):
    model = converted_tf_model(seeded_checkpoint("r50_ade20k"), "r50_ade20k")
    images = tf.constant(synthetic_images(3, 1, 200, 264), tf.float32)

    def forward(images: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = model.preprocess(images)
        features = model.backbone(inputs)
        outputs = model(inputs, training=False)
        post = postprocess(outputs, model.preset, tuple(inputs.shape[1:3]), tuple(images.shape[1:3]),
                           object_mask_threshold=0.3, overlap_threshold=0.5)
        return {**features, "pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"],
                "layer_masks": outputs["layer_masks"], **post}

    eager = forward(images)
    xla = tf.function(forward, jit_compile=True)(images)  # fails to compile if any op is host-only

    def relative_max_error(key: str) -> float:
        a, b = eager[key].numpy(), xla[key].numpy()
        return float(np.abs(a - b).max() / np.abs(a).max())

    # XLA fuses and reorders float32 arithmetic: the backbone agrees to a few ulp...
    for key in ("res2", "res3", "res4", "res5"):
        assert relative_max_error(key) <= 1e-5, key
    # ...and the model amplifies that: measured on the PyTorch reference, a 1e-6 relative perturbation of
    # res5 moves pred_masks by 2.4e-5 (x13, mostly in decoder layer 0's sharp cross-attention), so the
    # 4.5e-6 XLA reorders at res5 reach ~1.1e-4 at the outputs. Bound: 2e-4 of the largest magnitude.
    for key in ("pred_logits", "pred_masks", "layer_masks", "sem_seg"):
        assert relative_max_error(key) <= 2e-4, key
    assert np.mean(eager["semantic_map"].numpy() == xla["semantic_map"].numpy()) > 0.999
    np.testing.assert_array_equal(eager["panoptic_seg"].numpy(), xla["panoptic_seg"].numpy())


def test_saved_model_reloads_in_a_fresh_process_with_same_outputs(seeded_checkpoint, tmp_path):
    model = converted_tf_model(seeded_checkpoint("r50_6enc_coco_panoptic"), "r50_6enc_coco_panoptic")
    module = export_saved_model(model, tmp_path / "saved_model")
    images = synthetic_images(4, 2, 150, 190).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    expected = module.serve(tf.constant(images))  # the exported graph, run in this process
    eager = model(model.preprocess(tf.constant(images)))
    # The fresh process imports only TensorFlow: the SavedModel stands on its own.
    script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(tmp_path / 'saved_model')!r})\n"
        "f = m.signatures['serving_default']\n"
        f"out = f(images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})\n"
        "assert not any(name.startswith(('tf_maskformer', 'torch_reference', 'converter')) for name in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = np.load(tmp_path / "out.npz")
    assert set(reloaded) == {"pred_logits", "pred_masks", "semantic_map", "panoptic_seg", "segment_id",
                             "segment_category", "segment_area"}
    for key in reloaded:
        a, b = expected[key].numpy(), reloaded[key]
        assert a.shape == b.shape, key
        if a.dtype.kind == "f":
            assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), key
        else:
            assert np.mean(a == b) >= 0.9999, key
    assert reloaded["semantic_map"].shape == (2, 150, 190)
    assert reloaded["panoptic_seg"].shape == (2, 150, 190)
    # The graph (fused, reordered by grappler) against the eager model: float32 rounding level.
    for key in ("pred_logits", "pred_masks"):
        a, b = eager[key].numpy(), reloaded[key]
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), key
    metadata = json.loads((tmp_path / "saved_model" / "mfport_model.json").read_text())
    assert metadata["preset"] == "r50_6enc_coco_panoptic" and len(metadata["class_names"]) == 133


@pytest.mark.parametrize("images, message", [
    (np.zeros((64, 64, 3), np.float32), "expected rank 4"),
    (np.zeros((1, 3, 64, 64), np.float32), "channels first? the TF model is NHWC"),
    (np.zeros((1, 64, 64, 4), np.float32), "expected 3 RGB channels last"),
    (np.zeros((1, 64, 64, 3), np.int32), "expected float32 (or uint8)"),
    (np.zeros((1, 16, 64, 3), np.float32), "height 16 is below the minimum 32"),
])
def test_bad_input_is_named(tf_models, images, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        tf_models["r50_ade20k"].predict_raw(tf.constant(images))


def test_model_garden_config_overrides_preset():
    config = MaskFormerModel(preset="r50_ade20k")
    config.override({"num_classes": 20, "num_queries": 50, "input_size": [256, 256]})
    preset = config.to_preset()
    assert (preset.num_classes, preset.num_queries, preset.backbone_depth) == (20, 50, 50)
    model = MaskFormer(preset).build_for(64, 64)
    out = model(tf.zeros([1, 64, 64, 3]))
    assert tuple(out["pred_logits"].shape) == (1, 50, 21)
    assert config.as_dict()["preset"] == "r50_ade20k"


@pytest.mark.parametrize("in_hw, out_hw", [((128, 128), (512, 512)), ((37, 53), (150, 210)), ((30, 40), (17, 23))])
def test_separable_bilinear_resize_equals_torch_values_and_gradients(in_hw, out_hw):
    """The criterion's matmul resize: PyTorch's exact weights, its values and its input gradient."""
    import torch

    from tf_maskformer.modeling.layers import bilinear_resize_separable, bilinear_weights_like_torch

    for size_in, size_out in zip(in_hw, out_hw, strict=True):  # weights along each axis: bit for bit
        one_hot_rows = torch.eye(size_in)[:, None, None, :]
        torch_weights = torch.nn.functional.interpolate(one_hot_rows, size=(1, size_out), mode="bilinear",
                                                        align_corners=False)[:, 0, 0, :].T.numpy()
        np.testing.assert_array_equal(bilinear_weights_like_torch(size_out, size_in), torch_weights)
    x = np.random.default_rng(0).normal(0, 5, size=(3, *in_hw)).astype(np.float32)
    upstream = np.random.default_rng(1).normal(size=(3, *out_hw)).astype(np.float32)
    torch_x = torch.from_numpy(x)[:, None].requires_grad_()
    torch_y = torch.nn.functional.interpolate(torch_x, size=out_hw, mode="bilinear", align_corners=False)
    (torch_y[:, 0] * torch.from_numpy(upstream)).sum().backward()
    tf_x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tf_x)
        tf_y = tf.function(lambda v: bilinear_resize_separable(v, out_hw), jit_compile=True)(tf_x)
        objective = tf.reduce_sum(tf_y * upstream)
    np.testing.assert_allclose(tf_y.numpy(), torch_y[:, 0].detach().numpy(), rtol=0, atol=4e-7 * np.abs(x).max())
    np.testing.assert_allclose(tape.gradient(objective, tf_x).numpy(), torch_x.grad[:, 0].numpy(), rtol=0,
                               atol=1e-6 * np.abs(torch_x.grad.numpy()).max())


@pytest.mark.parametrize("stride, use_bias", [(1, True), (2, False)])
def test_1x1_conv_under_xla_is_a_dot_with_torch_values_and_gradients(stride, use_bias):
    """Under XLA a 1x1 Conv2DNormAct runs as a matmul (no convolution left in the HLO); its output and its
    input and kernel gradients equal torch's conv2d on an odd-sized input."""
    import torch

    from tf_maskformer.modeling.layers import Conv2DNormAct

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 37, 53, 24)).astype(np.float32)
    layer = Conv2DNormAct(16, 1, stride=stride, use_bias=use_bias)
    layer.build(x.shape)
    layer.kernel.assign(rng.normal(size=(1, 1, 24, 16)).astype(np.float32) / 5)
    if use_bias:
        layer.bias.assign(rng.normal(size=16).astype(np.float32))
    upstream = rng.normal(size=(2, (37 - 1) // stride + 1, (53 - 1) // stride + 1, 16)).astype(np.float32)

    @tf.function(jit_compile=True)
    def forward_backward(images: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch(images)
            y = layer(images)
            objective = tf.reduce_sum(y * upstream)
        return (y, *tape.gradient(objective, [images, layer.kernel]))

    hlo = forward_backward.experimental_get_compiler_ir(tf.constant(x))(stage="hlo")
    assert " dot(" in hlo and " convolution(" not in hlo
    tf_y, tf_dx, tf_dk = (t.numpy() for t in forward_backward(tf.constant(x)))

    torch_x = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    torch_k = torch.from_numpy(layer.kernel.numpy()).permute(3, 2, 0, 1).requires_grad_()
    torch_b = torch.from_numpy(layer.bias.numpy()) if use_bias else None
    torch_y = torch.nn.functional.conv2d(torch_x, torch_k, torch_b, stride=stride)
    (torch_y * torch.from_numpy(upstream).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(tf_y, torch_y.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tf_dx, torch_x.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tf_dk, torch_k.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-5, atol=1e-4)


def test_max_pool_under_xla_routes_ties_like_torch():
    """The stem's max-pool under XLA (nine strided views): torch's values, and its gradient routing on an
    input full of ties (each window's gradient goes to its first maximum, in row-major order)."""
    import torch

    from tf_maskformer.modeling.layers import max_pool_3x3_s2_p1

    x = np.random.default_rng(0).integers(0, 3, size=(2, 37, 52, 5)).astype(np.float32)
    upstream = np.random.default_rng(1).normal(size=(2, 19, 26, 5)).astype(np.float32)

    @tf.function(jit_compile=True)
    def forward_backward(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(images)
            y = max_pool_3x3_s2_p1(images)
            objective = tf.reduce_sum(y * upstream)
        return y, tape.gradient(objective, images)

    assert " select-and-scatter(" not in forward_backward.experimental_get_compiler_ir(tf.constant(x))(stage="hlo")
    tf_y, tf_dx = (t.numpy() for t in forward_backward(tf.constant(x)))
    torch_x = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    torch_y = torch.nn.functional.max_pool2d(torch_x, 3, 2, 1)
    (torch_y * torch.from_numpy(upstream).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_array_equal(tf_y, torch_y.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(tf_dx, torch_x.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


def test_winograd_conv_under_xla_is_as_accurate_as_torch_float32():
    """winograd_conv3x3 (XLA-CPU's form of wide 3x3 convs) on odd sizes: values, input and kernel gradients
    against torch in float64, each within 2x the error of torch's own float32 conv (or 1e-6 of the max)."""
    import torch

    from tf_maskformer.modeling.layers import winograd_conv3x3

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 35, 49, 64)).astype(np.float32)  # 33x47 output: odd, so the last tiles are cut
    kernel = (rng.normal(size=(3, 3, 64, 40)) / 24).astype(np.float32)
    upstream = rng.normal(size=(2, 33, 47, 40)).astype(np.float32)

    @tf.function(jit_compile=True)
    def forward_backward(images: tf.Tensor, weights: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch([images, weights])
            y = winograd_conv3x3(images, weights)
            objective = tf.reduce_sum(y * upstream)
        return (y, *tape.gradient(objective, [images, weights]))

    ours = [t.numpy() for t in forward_backward(tf.constant(x), tf.constant(kernel))]

    def torch_conv(dtype: torch.dtype) -> list[np.ndarray]:
        torch_x = torch.from_numpy(x).permute(0, 3, 1, 2).to(dtype).requires_grad_()
        torch_k = torch.from_numpy(kernel).permute(3, 2, 0, 1).to(dtype).requires_grad_()
        torch_y = torch.nn.functional.conv2d(torch_x, torch_k)
        (torch_y * torch.from_numpy(upstream).permute(0, 3, 1, 2).to(dtype)).sum().backward()
        return [t.double().numpy() for t in (torch_y.detach().permute(0, 2, 3, 1), torch_x.grad.permute(0, 2, 3, 1),
                                             torch_k.grad.permute(2, 3, 1, 0))]

    torch_single, torch_exact = torch_conv(torch.float32), torch_conv(torch.float64)
    for name, value, single, exact in zip(("y", "dx", "dk"), ours, torch_single, torch_exact, strict=True):
        scale = np.abs(exact).max()
        torch_error = np.abs(single - exact).max() / scale
        assert np.abs(value - exact).max() / scale <= max(2 * torch_error, 1e-6), name


def test_wide_3x3_convs_under_xla_on_cpu_take_the_winograd_form():
    """Conv2DNormAct under XLA on a CPU: a 256-channel 3x3 conv on 32x32 runs as Winograd matmuls (no
    convolution in the HLO) with the eager conv's values; a 64-channel one stays a convolution, and so does
    every conv where a GPU is present (cuDNN's are fast)."""
    from tf_maskformer.modeling.layers import Conv2DNormAct

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 32, 32, 256)), tf.float32)
    cpu_only = not tf.config.list_logical_devices("GPU")
    for filters, winograd in ((256, cpu_only), (64, False)):
        inputs, layer = x[..., :filters], Conv2DNormAct(filters, 3, padding=1, use_bias=True)
        layer.build(inputs.shape)
        layer.kernel.assign(rng.normal(size=(3, 3, filters, filters)) / np.sqrt(9 * filters))
        eager = layer(inputs)
        forward = tf.function(layer, jit_compile=True)
        hlo = forward.experimental_get_compiler_ir(inputs)(stage="hlo")
        assert (" convolution(" not in hlo) == winograd and (" dot(" in hlo) == winograd
        xla = forward(inputs).numpy()
        # Two float32 sums of 2304 products, each up to ~2e-6 of the max off float64 (see the test above).
        assert np.abs(xla - eager.numpy()).max() <= 5e-6 * np.abs(eager.numpy()).max()
