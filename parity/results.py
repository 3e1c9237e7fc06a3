"""What a parity run finds, as types: every row kind (tap, output, inference, matcher, loss, gradient, config
lint) is a dataclass with a Verdict; report.json is dataclasses.asdict of a ParityResult (schema 2)."""

from __future__ import annotations

import dataclasses
import enum


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    REPORTED = "reported"  # shown, not judged (e.g. panoptic maps under the bf16 profile)

    @property
    def ok(self) -> bool:
        return self is not Verdict.FAIL


class RowKind(enum.Enum):
    TAP = "tap"  # a block's output inside the model
    OUTPUT = "output"  # pred_logits, pred_masks and the aux outputs


@dataclasses.dataclass
class ErrorMetrics:
    """A value against its reference (both in the TF layout)."""

    shape: list[int]
    max_abs_error: float
    mean_abs_error: float
    rmse: float
    max_abs_ref: float
    rel_max_error: float  # max |value - ref| / max |ref|
    cosine: float
    share_outside_tolerance: float  # of elements outside atol * max|ref| + rtol * |ref|
    argmax_agreement: float | None = None  # logits: share of positions with the same argmax

    @property
    def exact(self) -> bool:
        return self.max_abs_error == 0.0


@dataclasses.dataclass
class Comparison:
    """One mode (cumulative or isolated) of one row, its verdict, and the float32 context it was judged in.

    Without a float64 run the verdict is metrics.rel_max_error <= bound. With one (cumulative rows), it is
    tf_vs_float64 <= allowed = max(bound, FLOAT32_BAND_FACTOR * reference_vs_float64): TF is judged against
    the exact function, within a band set by how far PyTorch's own float32 run is from it at that tap.
    """

    metrics: ErrorMetrics | None  # None when the shapes differ
    bound: float
    verdict: Verdict
    shapes: tuple[list[int], list[int]] | None = None  # (reference, TF) when they differ
    tf_vs_float64: float | None = None
    reference_vs_float64: float | None = None
    allowed: float | None = None  # the bound the verdict used: max(bound, factor * reference_vs_float64)
    tf_amplification: float | None = None  # this block's error out / error in (TF against float64)
    reference_amplification: float | None = None  # the same for PyTorch's float32 run
    reference_bf16: float | None = None  # bf16 profile: PyTorch's own autocast-bf16 error at this tap

    @property
    def judged_error(self) -> float | None:
        if self.tf_vs_float64 is not None:
            return self.tf_vs_float64
        return None if self.metrics is None else self.metrics.rel_max_error


@dataclasses.dataclass
class TapRow:
    tap: str
    pytorch_module: str
    tf_layer: str
    kind: RowKind
    cumulative: Comparison | None = None
    isolated: Comparison | None = None

    @property
    def verdict(self) -> Verdict:
        verdicts = [c.verdict for c in (self.cumulative, self.isolated) if c is not None]
        return Verdict.FAIL if Verdict.FAIL in verdicts else Verdict.PASS


@dataclasses.dataclass
class SemanticRow:
    """Argmax of the semantic scores, TF against PyTorch: pixels where they differ must be near-ties of the
    reference (top-2 class scores within tie_band), and the share agreeing must reach the bound."""

    argmax_agreement: float
    differing_pixels: int
    near_tie_pixels: int  # of the differing pixels, those at a near-tie of the reference
    tie_band: float
    bound: float | None
    verdict: Verdict
    reference_bf16_agreement: float | None = None


@dataclasses.dataclass
class PanopticRow:
    label: str  # "preset" or "low" thresholds
    thresholds: tuple[float, float]
    pixel_agreement: float
    differing_pixels: int
    segments: int
    segments_equal: bool
    pq_tf_vs_pytorch: float
    bound: float | None
    verdict: Verdict
    agrees_with: str  # "float32" (PyTorch's float32 run), "float64" (its exact run), or "neither"


@dataclasses.dataclass
class MatcherRow:
    """Per decoder layer: the TF assignment (scipy on the host, and the in-graph XLA solver) against PyTorch's.
    A different assignment passes only if it is optimal too: its cost on PyTorch's cost matrix within the
    float32 difference of the two cost matrices (2 x targets x max elementwise difference) of the optimum."""

    layer: str
    identical: bool
    in_graph_identical: bool
    cost_gap: float  # TF assignment's cost on PyTorch's costs minus PyTorch's optimum (0 when identical)
    cost_tolerance: float
    verdict: Verdict


@dataclasses.dataclass
class LossRow:
    term: str
    pytorch: float
    tensorflow: float
    rel_error_cumulative: float  # end to end: TF's forward and criterion against PyTorch's
    rel_error_isolated: float  # TF's criterion on PyTorch's outputs and assignment
    isolated_allowed: float
    verdict: Verdict  # the isolated one
    pytorch_float64: float | None = None  # float64 criterion on the same float32 outputs
    tf_isolated_vs_float64: float | None = None
    reference_isolated_vs_float64: float | None = None
    end_to_end_float64: float | None = None  # the float64 model's loss
    tf_rel_error_vs_float64: float | None = None
    reference_rel_error_vs_float64: float | None = None


@dataclasses.dataclass
class GradientRow:
    tf_variable: str
    cosine: float  # TF against PyTorch
    reference_self_cosine: float  # PyTorch against itself under another thread count (summation order)
    analytically_zero: bool
    rel_max_error: float
    allowed_deficit: float  # the largest 1 - cosine the verdict accepted
    verdict: Verdict
    tf_cosine_to_float64: float | None = None
    reference_cosine_to_float64: float | None = None
    # The float64 gradient with the ReLU gates float32 noise may flip flipped, against the float64 gradient: how
    # far a float32 computation may legitimately land (None when no gate is that close to zero).
    ambiguous_gates_cosine: float | None = None


@dataclasses.dataclass
class TrainingParity:
    matcher: list[MatcherRow]
    losses: list[LossRow]
    gradients: list[GradientRow]
    total_loss_pytorch: float
    total_loss_tensorflow: float
    missing_gradients: list[str]
    float64: bool
    float64_same_assignment: bool | None
    passed: bool


@dataclasses.dataclass
class LintRow:
    field: str
    pytorch: object
    tensorflow: object
    same: bool


@dataclasses.dataclass
class ParityResult:
    preset: str
    profile: str
    modes: list[str]
    inputs: dict[str, object]
    rows: list[TapRow]
    semantic: SemanticRow | None
    panoptic: list[PanopticRow]
    lint: list[LintRow]
    first_divergence: str | None
    passed: bool
    float64: bool
    band_factor: float
    environment: dict[str, object]
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    training: TrainingParity | None = None

    def row(self, tap: str) -> TapRow:
        return next(r for r in self.rows if r.tap == tap)


def to_jsonable(value: object) -> object:
    """dataclasses.asdict with enums as their values (report.json)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
