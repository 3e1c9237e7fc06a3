"""The TF MaskFormer: shapes of every family at the sizes that occur, XLA, SavedModel, input errors, configs, and
the hand-written ops (XLA forms, Swin pieces) against PyTorch's."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import torch
from tf_helpers import padded, stride_sizes

from mfport.core.presets import PRESETS, get_preset
from mfport.core.synthetic_images import synthetic_images
from mfport.parity.harness import float64_twin
from mfport.parity.metrics import FLOAT32_BAND_FACTOR, rel_max_error
from mfport.tf_maskformer.configs.maskformer import MaskFormerModel, model_config
from mfport.tf_maskformer.modeling.factory import build_maskformer
from mfport.tf_maskformer.modeling.inference import postprocess
from mfport.tf_maskformer.modeling.maskformer_model import InputError, MaskFormer
from mfport.torch_reference.maskformer import MaskFormer as TorchMaskFormer


@pytest.mark.heavy
@pytest.mark.parametrize(("preset_name", "sizes"), [
    ("r50_6enc_coco_panoptic", [(512, 512), (475, 633), (96, 128)]),
    ("r101c_ade20k", [(480, 640)]),
    # Swin: 512/640 squares, 480x640, the unpadded COCO case (800x1201: odd stage sizes, res5 25x38 not a
    # multiple of the 7x7 window) and an image whose res5 (2x3) is smaller than one window.
    ("swin_t_coco_panoptic", [(512, 512), (480, 640), (800, 1201), (64, 96)]),
    ("swin_b_ade20k", [(640, 640), (100, 130)]),
])
def test_full_model_shapes(preset_name, sizes):
    preset = get_preset(preset_name)
    model = build_maskformer(preset)
    for height, width in sizes:
        batch = 2 if height * width <= 128 * 128 else 1  # the batch axis through windows at the small size only
        images = tf.random.uniform([batch, height, width, 3], 0, 255)
        inputs = model.preprocess(images)
        divisor = preset.size_divisibility
        assert tuple(inputs.shape) == (batch, padded(height, divisor), padded(width, divisor), 3)
        out = model(inputs)
        h, w = padded(height, divisor), padded(width, divisor)
        if preset.backbone.kind == "swin":  # patch embedding pads to 4, each merge to even
            res2 = (-(-h // 4), -(-w // 4))
        else:
            res2 = (stride_sizes(h)["res2"], stride_sizes(w)["res2"])
        assert tuple(out["pred_logits"].shape) == (batch, 100, preset.num_classes + 1)
        assert tuple(out["pred_masks"].shape) == (batch, 100, *res2)
        assert tuple(out["layer_logits"].shape) == (6, batch, 100, preset.num_classes + 1)


@pytest.mark.heavy
@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r101c_ade20k", "r50_6enc_coco_panoptic",
                                         "swin_t_coco_panoptic", "swin_b_ade20k"])
def test_parameter_count_equals_pytorch(preset_name):
    preset = get_preset(preset_name)
    model = build_maskformer(preset)
    tf_count = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    with torch.device("meta"):
        torch_count = sum(p.numel() for p in TorchMaskFormer(preset).parameters())
    assert tf_count == torch_count
    # Frozen BN lives in non-trainable variables, four per norm, never updated by training (Swin has none).
    frozen = model.non_trainable_variables
    assert all("/norm/" in v.name for v in frozen) and bool(frozen) == (preset.backbone.kind == "resnet")


@pytest.mark.heavy
def test_variables_are_named_after_original_module_paths():
    for preset_name, expected in (
        ("r50_6enc_coco_panoptic", ("maskformer/backbone/res3/0/conv2/kernel:0",
                                    "maskformer/backbone/res3/0/conv2/norm/running_var:0",
                                    "maskformer/sem_seg_head/pixel_decoder/adapter_1/norm/gamma:0",
                                    "maskformer/sem_seg_head/pixel_decoder/transformer/encoder/layers/5/self_attn/"
                                    "query/bias:0",
                                    "maskformer/sem_seg_head/predictor/transformer/decoder/layers/0/multihead_attn/"
                                    "key/kernel:0",
                                    "maskformer/sem_seg_head/predictor/query_embed/embeddings:0")),
        ("swin_t_ade20k", ("maskformer/backbone/patch_embed/proj/kernel:0",
                           "maskformer/backbone/layers/2/blocks/5/attn/relative_position_bias_table:0",
                           "maskformer/backbone/layers/2/blocks/5/attn/query/kernel:0",
                           "maskformer/backbone/layers/0/downsample/reduction/kernel:0",
                           "maskformer/backbone/norm3/gamma:0")),
        ("r101c_ade20k", ("maskformer/backbone/stem/conv3/norm/running_mean:0",
                          "maskformer/backbone/res5/2/conv2/kernel:0")),
    ):
        names = {v.name for v in build_maskformer(preset_name).variables}
        assert set(expected) <= names


def _flips_only_at_near_ties(scores_a: np.ndarray, scores_b: np.ndarray) -> None:
    """Argmax maps of two float computations of the same scores [..., K] may differ only where a's top two
    scores are closer than twice the largest difference between a and b (no flip is possible elsewhere)."""
    margin = np.diff(np.sort(scores_a, axis=-1)[..., -2:], axis=-1)[..., 0]
    differing = scores_a.argmax(-1) != scores_b.argmax(-1)
    assert (margin[differing] <= 2 * np.abs(scores_a - scores_b).max()).all()


@pytest.mark.heavy
@pytest.mark.numerics
@pytest.mark.parametrize("preset_name", ["r50_ade20k", "swin_t_coco_panoptic"])
def test_xla_forward_and_postprocess_are_as_accurate_as_eager(models, preset_name):
    """The XLA-compiled forward (with its XLA-only forms: Winograd, 1x1 as matmul, strided max-pool) against a
    float64 run of the reference, within the same float32 band the eager model is judged by."""
    torch_model, model = models(preset_name)
    images_np = synthetic_images(3, 1, 200, 264)
    images = tf.constant(images_np, tf.float32)

    def forward(images: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = model.preprocess(images)
        outputs = model(inputs, training=False)
        post = postprocess(outputs, model.preset, tuple(inputs.shape[1:3]), tuple(images.shape[1:3]),
                           object_mask_threshold=0.3, overlap_threshold=0.5)
        return {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"], **post}

    eager = forward(images)
    xla = tf.function(forward, jit_compile=True)(images)  # fails to compile if any op is host-only
    torch_images = list(torch.from_numpy(images_np).permute(0, 3, 1, 2))
    with torch.no_grad():
        reference = torch_model(torch_images)
        exact = float64_twin(torch_model)([i.double() for i in torch_images])
    for key in ("pred_logits", "pred_masks"):
        own = rel_max_error(exact[key].numpy(), reference[key].numpy())
        for value in (eager[key], xla[key]):
            assert rel_max_error(exact[key].numpy(), value.numpy()) <= max(1e-4, FLOAT32_BAND_FACTOR * own), key
    _flips_only_at_near_ties(eager["sem_seg"].numpy(), xla["sem_seg"].numpy())


@pytest.mark.slow
def test_saved_model_of_a_swin_model_serves_with_tensorflow_alone(models, tmp_path):
    """Both signatures reload in a fresh process that imports TensorFlow only; the network at the input's size,
    and the predictor's test-time resize with maps back at the image's size."""
    from mfport.tf_maskformer.serving.export import export_saved_model

    _, model = models("swin_t_coco_panoptic")
    serving = export_saved_model(model, tmp_path / "saved_model")
    images = synthetic_images(4, 2, 150, 190).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    expected = serving.serve(tf.constant(images))
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(tmp_path / 'saved_model')!r})\n"
        f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
        "out = m.signatures['serving_default'](images=tf.constant(images))\n"
        "one = m.signatures['predict_original'](image=tf.constant(images[0].astype(np.uint8)))\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **{{k: v.numpy() for k, v in out.items()}},\n"
        "         **{'original_' + k: v.numpy() for k, v in one.items()})\n"
        "assert not any(name.startswith(('mfport', 'torch')) for name in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = np.load(tmp_path / "out.npz")
    for key, value in expected.items():  # the same graph in another process (threads may split sums otherwise)
        a, b = value.numpy(), reloaded[key]
        assert a.shape == b.shape, key
        # The same graph on the same CPU: only a different split of sums across threads, ~1e-7 of the max.
        if a.dtype.kind == "f":
            assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), key
        else:
            assert np.mean(a == b) >= 0.9999, key
    assert reloaded["semantic_map"].shape == (2, 150, 190)
    # predict_original: resized to the test size (800 on the short side for COCO), maps at the image's size.
    assert reloaded["original_semantic_map"].shape == (150, 190)
    assert reloaded["original_pred_masks"].shape[-2:] == (800 // 4, -(-1013 // 4))
    metadata = json.loads((tmp_path / "saved_model" / "mfport_model.json").read_text())
    assert metadata["preset"] == "swin_t_coco_panoptic" and len(metadata["class_names"]) == 133
    assert metadata["test_min_size"] == 800


@pytest.mark.parametrize("images, message", [
    (np.zeros((64, 64, 3), np.float32), "expected rank 4"),
    (np.zeros((1, 3, 64, 64), np.float32), "channels first? the TF model is NHWC"),
    (np.zeros((1, 64, 64, 4), np.float32), "expected 3 RGB channels last"),
    (np.zeros((1, 64, 64, 3), np.int32), "expected float32 (or uint8)"),
    (np.zeros((1, 16, 64, 3), np.float32), "height 16 is below the minimum 32"),
])
def test_bad_input_is_named(images, message):
    model = MaskFormer(get_preset("r50_ade20k"))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        model.predict_raw(tf.constant(images))


def test_model_garden_config_spells_out_the_architecture():
    for preset in PRESETS.values():  # the config builds exactly the preset it was made from
        assert model_config(preset).to_preset() == preset
    config = model_config(get_preset("swin_b_coco_panoptic"))
    assert config.backbone.type == "swin" and config.backbone.swin.window_size == 12 and config.enforce_input_proj
    config = MaskFormerModel(preset="r50_ade20k", pixel_decoder="base", transformer_in_feature="res5")
    config.override({"num_classes": 20, "num_queries": 50, "input_size": [256, 256]})
    preset = config.to_preset()
    assert (preset.num_classes, preset.num_queries, preset.backbone.depth) == (20, 50, 50)
    assert preset.class_names[:2] == ("class_0", "class_1")
    out = MaskFormer(preset).build_for(64, 64)(tf.zeros([1, 64, 64, 3]))
    assert tuple(out["pred_logits"].shape) == (1, 50, 21)


@pytest.mark.parametrize("in_hw, out_hw", [((128, 128), (512, 512)), ((37, 53), (150, 210)), ((30, 40), (17, 23))])
def test_separable_bilinear_resize_equals_torch_values_and_gradients(in_hw, out_hw):
    """The criterion's matmul resize: PyTorch's exact weights, its values and its input gradient."""
    import torch

    from mfport.tf_maskformer.modeling.resize import bilinear_resize_separable, bilinear_weights_like_torch

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

    from mfport.tf_maskformer.modeling.layers import Conv2DNormAct

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

    from mfport.tf_maskformer.modeling.ops import max_pool_3x3_s2_p1

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

    from mfport.tf_maskformer.modeling.ops import winograd_conv3x3

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
    from mfport.tf_maskformer.modeling.layers import Conv2DNormAct

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


@pytest.mark.numerics
def test_dilated_res5_convs_equal_torch_eager_and_under_xla():
    """R101c's res5 3x3 convs with dilation 2 and 4 (padding = dilation): values and gradients as torch's."""
    from mfport.tf_maskformer.modeling.layers import Conv2DNormAct

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 13, 17, 8)).astype(np.float32)
    for dilation in (2, 4):
        layer = Conv2DNormAct(6, 3, padding=dilation, dilation=dilation)
        layer.build(x.shape)
        layer.kernel.assign(rng.normal(size=(3, 3, 8, 6)).astype(np.float32) / 5)
        torch_y = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                             torch.from_numpy(layer.kernel.numpy()).permute(3, 2, 0, 1),
                                             padding=dilation, dilation=dilation).permute(0, 2, 3, 1).numpy()
        for run in (layer, tf.function(layer, jit_compile=True)):
            np.testing.assert_allclose(run(tf.constant(x)).numpy(), torch_y, rtol=1e-5, atol=1e-5)


def test_swin_pieces_equal_the_reference_pieces():
    """The shifted-window mask, window partition order, PatchMerging concat order and a whole shifted block
    (odd size, padded to the window) in TF against the PyTorch reference's, on random inputs."""
    from mfport.tf_maskformer.modeling import swin as tf_swin
    from mfport.torch_reference import swin as torch_swin

    for height, width, window in ((9, 13, 4), (3, 5, 7), (14, 14, 7)):
        shift = window // 2
        expected = torch_swin.shifted_window_mask(height, width, window, shift).numpy()
        padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
        np.testing.assert_array_equal(tf_swin.shifted_window_mask(padded_h, padded_w, window, shift).numpy(),
                                      expected)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9 * 13, 8)).astype(np.float32)
    merge_torch = torch_swin.PatchMerging(8, 1e-5).eval()
    merge_tf = tf_swin.PatchMerging(8, 1e-5)
    merge_tf(tf.constant(x), hw=(9, 13))
    merge_tf.reduction.kernel.assign(merge_torch.reduction.weight.detach().numpy().T)
    with torch.no_grad():
        expected = merge_torch(torch.from_numpy(x), hw=(9, 13)).numpy()
    np.testing.assert_allclose(merge_tf(tf.constant(x), hw=(9, 13)).numpy(), expected, rtol=1e-5, atol=1e-5)

    from mfport.converter.rules import IN_PROJ_SPLIT

    block_torch = torch_swin.SwinTransformerBlock(8, 2, 4, 2, 4.0, 0.0, 1e-5).eval()
    with torch.no_grad():
        for parameter in block_torch.parameters():
            parameter.normal_(0, 0.3)
    block_tf = tf_swin.SwinTransformerBlock(8, 2, 4, 2, 4.0, 0.0, 1e-5)
    mask = torch_swin.shifted_window_mask(9, 13, 4, 2)
    block_tf(tf.constant(x), tf.constant(mask.numpy()), hw=(9, 13))
    attn = block_torch.attn
    q, k, v = IN_PROJ_SPLIT.forward(attn.qkv.weight.detach().numpy(), [(8, 2, 4)] * 3)
    qb, kb, vb = IN_PROJ_SPLIT.forward(attn.qkv.bias.detach().numpy(), [(2, 4)] * 3)
    for layer, kernel, bias in ((block_tf.attn.query, q, qb), (block_tf.attn.key, k, kb), (block_tf.attn.value, v, vb)):
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
    block_tf.attn.proj.kernel.assign(attn.proj.weight.detach().numpy().T)
    block_tf.attn.proj.bias.assign(attn.proj.bias.detach().numpy())
    block_tf.attn.relative_position_bias_table.assign(attn.relative_position_bias_table.detach().numpy())
    for name in ("norm1", "norm2"):
        getattr(block_tf, name).gamma.assign(getattr(block_torch, name).weight.detach().numpy())
        getattr(block_tf, name).beta.assign(getattr(block_torch, name).bias.detach().numpy())
    for ours, theirs in ((block_tf.fc1, block_torch.mlp.fc1), (block_tf.fc2, block_torch.mlp.fc2)):
        ours.kernel.assign(theirs.weight.detach().numpy().T)
        ours.bias.assign(theirs.bias.detach().numpy())
    with torch.no_grad():
        expected = block_torch(torch.from_numpy(x), mask, hw=(9, 13)).numpy()
    got = block_tf(tf.constant(x), tf.constant(mask.numpy()), hw=(9, 13)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # A swapped PatchMerging order or rolling before padding would not be this close (checked by mutating).
    assert np.abs(expected).max() > 1.0
