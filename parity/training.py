"""Parity beyond the forward pass: matcher assignments, loss terms and parameter gradients.

Phases: synthetic targets; the reference's backward (and the same under another thread count, and a float64
copy's, for context); TF's forward, criterion and backward; then the matcher, loss and gradient rows. Both
models run their training-time forward with dropout off on the same images and targets; each criterion
matches on its own model's outputs. Loss terms are also compared "isolated": the TF criterion on the PyTorch
outputs with the PyTorch assignment, so a row's error is the criterion's own. Every verdict follows the
float32 band rule of parity.metrics where a float64 run gives the reference's own error.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np

from mfport.converter.registry import map_to_tf_layout, tf_variable_path
from mfport.parity.metrics import FLOAT32_BAND_FACTOR, within_band
from mfport.parity.results import GradientRow, LossRow, MatcherRow, TrainingParity, Verdict

GRADIENT_COSINE_BOUND = 0.99999
LOSS_REL_BOUND = 1e-6
ZERO_GRADIENT_SCALE = 1e-6  # |grad| below this fraction of the largest gradient counts as zero


def synthetic_targets(seed: int, batch: int, padded: tuple[int, int], image: tuple[int, int], num_classes: int,
                      per_image: tuple[int, ...] = (3, 5)) -> list[dict[str, np.ndarray]]:
    """Per image: labels and blob masks inside the image, zero in the padding (as prepare_targets pads)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : image[0], 0 : image[1]]
    targets = []
    for b in range(batch):
        count = per_image[b % len(per_image)]
        masks = np.zeros((count, *padded), np.float32)
        for n in range(count):
            cy, cx = rng.uniform(0, image[0]), rng.uniform(0, image[1])
            radius = rng.uniform(0.1, 0.4) * min(image)
            masks[n, : image[0], : image[1]] = np.hypot(yy - cy, xx - cx) < radius
        targets.append({"labels": rng.integers(0, num_classes, size=count), "masks": masks})
    return targets


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _relative(reference: float, value: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-12)


def _head_relus(model: object) -> dict[str, object]:
    """The heads' ReLU modules (transformer FFNs, mask MLP): where one float32 gate flip moves a parameter's
    gradient visibly, since each hidden unit's gradient sums over few tokens (queries, stride-32 pixels)."""
    import torch

    return {name: module for name, module in model.sem_seg_head.named_modules() if isinstance(module, torch.nn.ReLU)}


@contextlib.contextmanager
def _recorded_relu_inputs(model: object) -> Iterator[dict[str, np.ndarray]]:
    recorded: dict[str, np.ndarray] = {}
    handles = [module.register_forward_hook(
        lambda mod, args, out, name=name: recorded.__setitem__(name, args[0].detach().double().numpy()))
        for name, module in _head_relus(model).items()]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _flipped_gates(model: object, ambiguous: dict[str, np.ndarray]) -> Iterator[None]:
    """ReLUs whose gates at the `ambiguous` elements are flipped (active <-> inactive)."""
    import torch

    def hook(module: object, args: tuple, out: torch.Tensor, name: str) -> torch.Tensor:
        flip = torch.from_numpy(ambiguous[name])
        return torch.where(flip, torch.where(args[0] > 0, torch.zeros_like(out), args[0]), out)

    handles = [module.register_forward_hook(lambda mod, a, o, name=name: hook(mod, a, o, name))
               for name, module in _head_relus(model).items() if name in ambiguous]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclasses.dataclass
class ReferenceRun:
    """One backward pass of a PyTorch model on the padded images and targets."""

    outputs: dict
    indices: list  # per layer (final first): per image (query indices, target indices)
    losses: dict
    total: float
    gradients: dict[str, np.ndarray]


def _reference_backward(model: object, padded: object, targets: list[dict],
                        relu_inputs: dict | None = None) -> ReferenceRun:
    model.zero_grad(set_to_none=True)
    with _recorded_relu_inputs(model) if relu_inputs is not None else contextlib.nullcontext() as recorded:
        outputs = model.forward_padded(padded)
    if relu_inputs is not None:
        relu_inputs.update(recorded)
    criterion = model.criterion
    indices = [criterion.matcher(layer, targets) for layer in [outputs, *outputs["aux_outputs"]]]
    losses = criterion.forward_with_indices(outputs, targets, indices)
    total = sum(criterion.weighted(losses).values())
    total.backward()
    gradients = {n: p.grad.detach().clone().numpy() for n, p in model.named_parameters() if p.grad is not None}
    return ReferenceRun(outputs, indices, losses, float(total.detach()), gradients)


def _other_thread_count_gradients(model: object, padded: object, targets: list[dict]) -> dict[str, np.ndarray]:
    """The reference's gradients with another thread count: float32 summation order alone."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        return _reference_backward(model, padded, targets).gradients
    finally:
        torch.set_num_threads(threads)


def _same_indices(a: list, b: list) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for pa, pb in zip(a, b, strict=True)
               for x, y in zip(pa, pb, strict=True))


def _assignment_cost(cost: np.ndarray, pairs: tuple) -> float:
    queries, targets = (np.asarray(p) for p in pairs)
    return float(cost[queries, targets].sum())


def _matcher_rows(torch_model: object, reference: ReferenceRun, tf_outputs: dict, tf_indices: list,
                  in_graph_indices: list, torch_targets: list, tf_costs: list[np.ndarray]) -> list[MatcherRow]:
    """Identical assignments pass; a different one passes when it is optimal too on PyTorch's costs, within the
    float32 difference of the two models' cost matrices."""
    matcher = torch_model.criterion.matcher
    layers = [reference.outputs, *reference.outputs["aux_outputs"]]
    names = ["final", *[f"aux_{i}" for i in range(len(layers) - 1)]]
    rows = []
    for position, (name, layer) in enumerate(zip(names, layers, strict=True)):
        torch_costs = [c.double().numpy() for c in matcher.cost_matrices(layer, torch_targets)]
        gap, tolerance = 0.0, 0.0
        identical = _same_indices(reference.indices[position], tf_indices[position])
        in_graph = _same_indices(reference.indices[position], in_graph_indices[position])
        for b, cost in enumerate(torch_costs):
            optimum = _assignment_cost(cost, reference.indices[position][b])
            difference = float(np.abs(cost - tf_costs[position][b]).max())
            tolerance = max(tolerance, 2 * cost.shape[1] * difference)
            for candidate in (tf_indices[position][b], in_graph_indices[position][b]):
                gap = max(gap, _assignment_cost(cost, candidate) - optimum)
        ok = (identical and in_graph) or gap <= tolerance
        rows.append(MatcherRow(name, identical, in_graph, gap, tolerance, Verdict.PASS if ok else Verdict.FAIL))
    return rows


def _loss_rows(reference: ReferenceRun, tf_losses: dict, isolated: dict, isolated_float64: dict | None,
               exact: ReferenceRun | None) -> list[LossRow]:
    rows = []
    for key, value in reference.losses.items():
        ref = float(value.detach())
        tf_value, iso = float(tf_losses[key]), float(isolated[key])
        row = LossRow(key, ref, tf_value, _relative(ref, tf_value), _relative(ref, iso), LOSS_REL_BOUND,
                      Verdict.PASS)
        if isolated_float64 is not None:  # the criterion itself in float64 on the same float32 outputs
            exact_value = float(isolated_float64[key])
            row.pytorch_float64 = exact_value
            row.tf_isolated_vs_float64 = _relative(exact_value, iso)
            row.reference_isolated_vs_float64 = _relative(exact_value, ref)
            ok, row.isolated_allowed = within_band(row.tf_isolated_vs_float64, row.reference_isolated_vs_float64,
                                                   LOSS_REL_BOUND)
        else:
            ok = row.rel_error_isolated <= LOSS_REL_BOUND
        row.verdict = Verdict.PASS if ok else Verdict.FAIL
        if exact is not None:  # end to end: each float32 model's loss against the float64 model's
            exact_value = float(exact.losses[key].detach())
            row.end_to_end_float64 = exact_value
            row.tf_rel_error_vs_float64 = _relative(exact_value, tf_value)
            row.reference_rel_error_vs_float64 = _relative(exact_value, ref)
        rows.append(row)
    return rows


def _ambiguous_gate_gradients(exact_model: object, padded: object, targets: list[dict], gates32: dict[str, np.ndarray],
                              gates64: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The float64 gradients with every ReLU gate that float32 noise may flip flipped: an element is ambiguous when
    its float64 input lies within FLOAT32_BAND_FACTOR x its layer's float32 error (the reference's own) of zero.
    A float32 computation may land on either side of each such gate (TF and PyTorch each flip some, by luck of
    rounding); this run bounds what that does to a gradient. None when no gate is ambiguous."""
    ambiguous = {}
    for name, exact in gates64.items():
        noise = float(np.abs(gates32[name] - exact).max())
        mask = np.abs(exact) <= FLOAT32_BAND_FACTOR * noise
        if mask.any():
            ambiguous[name] = mask
    if not ambiguous:
        return None
    with _flipped_gates(exact_model, ambiguous):
        return _reference_backward(exact_model, padded, targets).gradients


def _gradient_rows(reference: ReferenceRun, noise: dict, exact: ReferenceRun | None, tf_grads: dict,
                   shapes: dict, ambiguous_gradients: dict | None = None) -> list[GradientRow]:
    mapped = map_to_tf_layout(reference.gradients, shapes)
    noise = map_to_tf_layout(noise, shapes)
    exact_mapped = map_to_tf_layout(exact.gradients, shapes) if exact is not None else None
    flipped = map_to_tf_layout(ambiguous_gradients, shapes) if ambiguous_gradients is not None else None
    # Some gradients are analytically zero: attention key biases (softmax ignores a per-query shift) and
    # decoder layer 0's self-attention value kernel (its input, tgt, starts at zeros). Both frameworks
    # leave float noise there; cosine is meaningless, so such a row passes when both sides are noise.
    zero_level = ZERO_GRADIENT_SCALE * max(float(np.abs(g).max()) for g in mapped.values())
    rows = []
    for name, ref in mapped.items():
        value = tf_grads[name]
        zero = float(np.abs(ref).max()) <= zero_level and float(np.abs(value).max()) <= zero_level
        row = GradientRow(name, _cosine(ref, value), _cosine(ref, noise[name]), zero,
                          float(np.abs(ref - value).max() / max(np.abs(ref).max(), 1e-30)),
                          1 - GRADIENT_COSINE_BOUND, Verdict.PASS)
        if exact_mapped is not None:  # judged against the float64 gradient, in float32's own band
            row.tf_cosine_to_float64 = _cosine(exact_mapped[name], value)
            row.reference_cosine_to_float64 = _cosine(exact_mapped[name], ref)
            own_error = 1 - row.reference_cosine_to_float64
            if flipped is not None:  # what flipping the ambiguous ReLU gates does to it
                row.ambiguous_gates_cosine = _cosine(exact_mapped[name], flipped[name])
                own_error = max(own_error, 1 - row.ambiguous_gates_cosine)
            ok, row.allowed_deficit = within_band(1 - row.tf_cosine_to_float64, own_error, 1 - GRADIENT_COSINE_BOUND)
        else:
            ok = row.cosine >= GRADIENT_COSINE_BOUND
        row.verdict = Verdict.PASS if zero or ok else Verdict.FAIL
        rows.append(row)
    return rows


def run_training_parity(torch_model: object, tf_model: object, images: np.ndarray, seed: int = 0,
                        float64_reference: bool = True) -> TrainingParity:
    """Matcher, loss and gradient parity on synthetic targets; with `float64_reference` a float64 copy of the
    reference backpropagates too, and every verdict uses the float32 band rule."""
    import tensorflow as tf
    import torch

    from mfport.parity.harness import float64_twin
    from mfport.tf_maskformer.losses.maskformer_losses import MaskFormerLoss, pad_targets, to_indices
    from mfport.tf_maskformer.losses.maskformer_losses import SetCriterion as TfCriterion

    torch_model.eval()  # dropout off; gradients still flow (FrozenBN takes its scale/shift path)
    torch_images = list(torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2))
    padded, _ = torch_model.preprocess(torch_images)
    targets = synthetic_targets(seed, len(images), tuple(padded.shape[-2:]), tuple(images.shape[1:3]),
                                torch_model.preset.num_classes)
    torch_targets = [{"labels": torch.from_numpy(t["labels"]), "masks": torch.from_numpy(t["masks"])}
                     for t in targets]

    noise = _other_thread_count_gradients(torch_model, padded, torch_targets)
    gates32: dict[str, np.ndarray] = {}
    reference = _reference_backward(torch_model, padded, torch_targets, gates32)
    exact, same_assignment, isolated_float64, ambiguous_gradients = None, None, None, None
    if float64_reference:
        exact_model = float64_twin(torch_model)
        gates64: dict[str, np.ndarray] = {}
        exact = _reference_backward(exact_model, padded.double(), torch_targets, gates64)
        ambiguous_gradients = _ambiguous_gate_gradients(exact_model, padded.double(), torch_targets, gates32, gates64)
        same_assignment = all(_same_indices(a, b) for a, b in zip(reference.indices, exact.indices, strict=True))
        # The criterion alone in float64 on the float32 outputs, with their assignment: the isolated rows' band.
        outputs64 = {"pred_logits": reference.outputs["pred_logits"].detach().double(),
                     "pred_masks": reference.outputs["pred_masks"].detach().double(),
                     "aux_outputs": [{k: v.detach().double() for k, v in aux.items()}
                                     for aux in reference.outputs["aux_outputs"]]}
        with torch.no_grad():
            isolated_float64 = exact_model.criterion.forward_with_indices(outputs64, torch_targets, reference.indices)

    tf_criterion = TfCriterion(tf_model.preset)
    tf_targets = [{"labels": tf.constant(t["labels"]), "masks": tf.constant(t["masks"])} for t in targets]
    tf_inputs = tf_model.preprocess(tf.constant(np.asarray(images, np.float32)))
    with tf.GradientTape() as tape:
        tf_outputs = tf_model(tf_inputs, training=False)
        tf_losses, tf_indices = tf_criterion(tf_outputs, tf_targets)
        tf_total = tf_criterion.weighted_total(tf_losses)
    variables = tf_model.trainable_variables
    tf_grads = {tf_variable_path(v.name): tf.convert_to_tensor(g).numpy()
                for v, g in zip(variables, tape.gradient(tf_total, variables), strict=True)}

    # Isolated: the TF criterion on the PyTorch outputs with the PyTorch assignment.
    outputs = reference.outputs
    in_layer_order = [*outputs["aux_outputs"], outputs]  # the TF model stacks aux layers first, final last
    stacked = {"layer_logits": tf.constant(np.stack([o["pred_logits"].detach().numpy() for o in in_layer_order])),
               "layer_masks": tf.constant(np.stack([o["pred_masks"].detach().numpy() for o in in_layer_order]))}
    isolated, _ = tf_criterion(stacked, tf_targets,
                               indices=[[(s.numpy(), t.numpy()) for s, t in layer] for layer in reference.indices])
    # The in-graph solver (the XLA/TPU training path) on the same TF costs, compiled as in training.
    in_graph = MaskFormerLoss(tf_model.preset, "hungarian")
    match = tf.function(in_graph.match, jit_compile=True)
    padded_targets = pad_targets(tf_targets)
    layers = tf_outputs["layer_logits"].shape[0]
    order = [layers - 1, *range(layers - 1)]
    in_graph_indices = [to_indices(match(tf_outputs["layer_logits"][i], tf_outputs["layer_masks"][i], padded_targets))
                        for i in order]
    tf_costs = [np.transpose(in_graph.cost(tf_outputs["layer_logits"][i], tf_outputs["layer_masks"][i],
                                           padded_targets).numpy(), (0, 2, 1)).astype(np.float64) for i in order]
    tf_costs = [[c[b, :, : len(t["labels"])] for b, t in enumerate(targets)] for c in tf_costs]

    matcher = _matcher_rows(torch_model, reference, tf_outputs, tf_indices, in_graph_indices, torch_targets, tf_costs)
    losses = _loss_rows(reference, tf_losses, isolated, isolated_float64, exact)
    shapes = {tf_variable_path(v.name): tuple(v.shape) for v in variables}
    gradients = _gradient_rows(reference, noise, exact, tf_grads, shapes, ambiguous_gradients)
    missing = sorted(set(shapes) - set(map_to_tf_layout(reference.gradients, shapes)))
    passed = (all(r.verdict.ok for r in matcher) and all(r.verdict.ok for r in losses)
              and all(r.verdict.ok for r in gradients) and not missing)
    return TrainingParity(matcher, losses, gradients, reference.total, float(tf_total), missing, float64_reference,
                          same_assignment, passed)


def failing_gradient_context(training: TrainingParity) -> str | None:
    """For a run whose gradients break their verdict: how many of the failing tensors PyTorch's own gradient,
    recomputed under another thread count, also misses the fixed bound on (float32 summation order alone)."""
    failing = [r for r in training.gradients if not r.verdict.ok]
    if not failing:
        return None
    own = sum(r.reference_self_cosine < GRADIENT_COSINE_BOUND for r in failing)
    hint = "" if training.float64 else "; the float64 backward (--float64-gradients) judges them in float32's band"
    return (f"PyTorch against itself under another thread count is below cosine {GRADIENT_COSINE_BOUND} on {own} "
            f"of the {len(failing)} failing tensors too{hint}")
