"""experiments/zeroshot_errors.py: the error kinds, and top-1 as the evaluator has it."""

from clipforge.eval.suite import evaluate
from clipforge.models import load, tokenizer_for
from experiments.zeroshot_errors import ERROR_KINDS, error_kind, errors


def test_error_kinds():
    assert error_kind("red circle", "red circle") is None
    assert error_kind("red circle", "blue circle") == "colour"
    assert error_kind("red circle", "blue square") == "colour"  # colour first
    assert error_kind("red square", "red circle") == "circle/square"
    assert error_kind("cyan star", "cyan triangle") == "star/triangle"
    assert error_kind("cyan star", "cyan cross") == "other shape"


def test_errors_add_up_to_the_evaluators_top1(micro_checkpoint):
    top1, kinds = errors(micro_checkpoint, per_class=3)
    assert set(kinds) <= set(ERROR_KINDS)
    model = load(micro_checkpoint)
    res = evaluate(model, tokenizer_for(model), "zeroshot", per_class=3)
    expected = res["tasks"]["zeroshot"]["metrics"]["top1"]
    images = res["tasks"]["zeroshot"]["details"]["images"]
    # Both count correct images of 120; any gap under 1/240 is float rounding alone.
    assert images == 120 and abs(top1 - expected) < 1 / 240
    assert sum(kinds.values()) == round((1 - expected) * images)
