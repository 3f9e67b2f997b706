"""Pass manager: ordering rules, fixed points, honest modified flags, named failures."""

import dataclasses

import onnx_graphsurgeon as gs
import pytest

import builders
from onnxcomp.context import PassContext
from onnxcomp.errors import PassError, UsageError
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage
from onnxcomp.pass_manager import Check, FixedPoint, PassManager, validate_order
from onnxcomp.registry import create_pass


@dataclasses.dataclass(frozen=True)
class CountdownConfig(PassConfig):
    times: int = 2


class Countdown(Pass):
    """Renames one node per call until ``times`` renames happened (then reports no change)."""

    name = "countdown"
    Config = CountdownConfig
    changes_shapes = False

    def call(self, graph, ctx):
        done = sum(n.name.startswith("renamed") for n in graph.nodes)
        if done >= self.config.times:
            return PassResult(graph, False)
        graph.nodes[done].name = f"renamed{done}"
        return PassResult(graph, True, {"renamed": 1})


class Explodes(Pass):
    name = "explodes"

    def call(self, graph, ctx):
        raise ValueError("boom")


class BreaksGraph(Pass):
    """Makes the Relu read a tensor that nothing produces."""

    name = "breaks-graph"

    def call(self, graph, ctx):
        relu = next(n for n in graph.nodes if n.op == "Relu")
        relu.inputs[0] = gs.Variable("dangling", dtype=None)
        return PassResult(graph, True)


def _staged(stage: Stage, pass_name: str) -> Pass:
    cls = type(pass_name.title().replace("-", ""), (Countdown,), {"name": pass_name, "stage": stage})
    return cls(times=0)


def test_stage_order_enforced_when_building():
    quantize, fold = _staged(Stage.QUANTIZE, "q"), _staged(Stage.FOLD, "f")
    with pytest.raises(UsageError, match="'f' \\(fold stage\\) cannot run after 'q' \\(quantize stage\\)"):
        PassManager([quantize, fold])
    PassManager([fold, Countdown(), quantize, Countdown()])  # cleanup passes may go anywhere


def test_order_checked_inside_fixed_point_groups():
    with pytest.raises(UsageError):
        validate_order([_staged(Stage.PRUNE, "p"), FixedPoint((_staged(Stage.FOLD, "f"), Countdown()))])


def test_fixed_point_iterates_until_no_change():
    manager = PassManager([FixedPoint((Countdown(times=2),), max_iterations=5)], checks=())
    result = manager.run(builders.conv_bn_relu())
    assert [s.modified for s in result.steps] == [True, True, False]
    assert [s.iteration for s in result.steps] == [1, 2, 3]


def test_fixed_point_respects_its_bound():
    manager = PassManager([FixedPoint((Countdown(times=10),), max_iterations=2)], checks=())
    result = manager.run(builders.conv_bn_relu())
    assert len(result.steps) == 2 and all(s.modified for s in result.steps)


def test_running_a_real_pass_twice_reports_no_change_the_second_time():
    model = builders.conv_bn_relu()
    manager = PassManager([create_pass("fold-batchnorm"), create_pass("fold-batchnorm")], checks=())
    result = manager.run(model)
    assert [s.modified for s in result.steps] == [True, False]


def test_failing_pass_is_named_with_predecessors_and_cause_chained():
    manager = PassManager([Countdown(times=1), Explodes()], checks=())
    with pytest.raises(PassError, match="pass 'explodes' failed \\(after countdown\\): boom") as info:
        manager.run(builders.conv_bn_relu())
    assert isinstance(info.value.__cause__, ValueError)


def test_check_after_pass_names_the_pass():
    manager = PassManager([Countdown(times=1), BreaksGraph()], checks=(Check.CHECKER,))
    with pytest.raises(PassError, match="check 'checker' failed after pass 'breaks-graph' \\(after countdown\\)"):
        manager.run(builders.conv_bn_relu())


def test_ort_load_check_runs():
    manager = PassManager([BreaksGraph()], checks=("ort-load",))
    with pytest.raises(PassError, match="check 'ort-load' failed"):
        manager.run(builders.conv_bn_relu())


def test_unknown_check_is_a_usage_error():
    with pytest.raises(UsageError, match="valid checks: checker, shape-inference, ort-load"):
        PassManager([], checks=("everything",))


def test_pass_needing_data_fails_before_running_anything():
    class NeedsData(Countdown):
        name = "needs-data"
        needs_data = True

    with pytest.raises(UsageError, match="pass 'needs-data' needs calibration data"):
        PassManager([NeedsData()]).run(builders.conv_bn_relu(), PassContext(template=builders.conv_bn_relu()))


def test_input_model_is_not_modified():
    model = builders.conv_bn_relu()
    snapshot = model.SerializeToString()
    PassManager([create_pass("fold-batchnorm")]).run(model)
    assert model.SerializeToString() == snapshot
