"""Registry lookups, option validation, presets and YAML recipes."""

import dataclasses

import pytest

from onnxcomp.errors import RecipeError, UsageError
from onnxcomp.pass_manager import FixedPoint
from onnxcomp.passes.fold_constants import FoldConstants
from onnxcomp.recipe import load_recipe, parse_recipe
from onnxcomp.registry import PASSES, build_pipeline, create_pass, describe_passes


def test_unknown_pass_lists_valid_names():
    with pytest.raises(UsageError, match="unknown pass 'fold-everything'; valid passes: .*fold-batchnorm"):
        create_pass("fold-everything")


def test_unknown_option_lists_valid_options():
    with pytest.raises(UsageError, match="unknown option\\(s\\) growth; valid options: max_growth_bytes"):
        create_pass("fold-constants", {"growth": 1})


def test_options_are_coerced_and_validated():
    p = create_pass("fold-constants", {"max-growth-bytes": "2048"})
    assert isinstance(p, FoldConstants) and p.config.max_growth_bytes == 2048
    with pytest.raises(UsageError, match="expected an integer"):
        create_pass("fold-constants", {"max_growth_bytes": "lots"})
    with pytest.raises(UsageError, match="max_growth_bytes must be >= 0"):
        create_pass("fold-constants", {"max_growth_bytes": -1})


def test_config_is_frozen():
    p = create_pass("fold-constants")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.config.max_growth_bytes = 1


def test_presets_expand_to_fixed_point_groups():
    elements = build_pipeline(["cleanup", "infer-shapes"])
    assert isinstance(elements[0], FixedPoint)
    assert [p.name for p in elements[0].passes][0] == "fold-constants"
    assert elements[1].name == "infer-shapes"


def test_pipeline_items_must_be_names_or_one_key_mappings():
    with pytest.raises(UsageError, match="pipeline item 1"):
        build_pipeline([{"a": {}, "b": {}}])


def test_every_registered_pass_is_described_and_constructible():
    rows = {row["name"]: row for row in describe_passes()}
    assert set(rows) == set(PASSES)
    for name, cls in PASSES.items():
        assert rows[name]["summary"], f"{name} needs a docstring summary"
        if not cls.needs_data:
            assert create_pass(name).name == name


def test_recipe_round_trip(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("passes:\n  - cleanup\n  - fold-constants: {max_growth_bytes: 0}\nchecks: [checker, ort-load]\n")
    recipe = load_recipe(path)
    assert isinstance(recipe.elements[0], FixedPoint)
    assert recipe.elements[1].config.max_growth_bytes == 0
    assert [c.value for c in recipe.checks] == ["checker", "ort-load"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("passes: [cleanup]\nextra: 1\n", "unknown key\\(s\\) extra"),
        ("passes: []\n", "'passes' must be a non-empty list"),
        ("- cleanup\n", "expected a mapping"),
        ("passes: [cleanup\n", "invalid YAML"),
        ("passes: [nope]\n", "unknown pass 'nope'"),
        ("passes:\n  - fold-constants: {bogus: 1}\n", "unknown option\\(s\\) bogus"),
        ("passes: [cleanup]\nchecks: [everything]\n", "unknown check"),
        ("passes: !!python/object/apply:os.system ['echo hacked']\n", "invalid YAML"),
    ],
)
def test_bad_recipes_name_the_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message) as info:
        load_recipe(path)
    assert "bad.yaml" in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "absent.yaml")


def test_parse_recipe_rejects_presets_with_options():
    with pytest.raises(RecipeError, match="preset 'cleanup' takes no options"):
        parse_recipe({"passes": [{"cleanup": {"x": 1}}]})


def test_described_defaults_come_from_the_config_dataclasses():
    """`onnxcomp passes` showed layer_ratios = None: a default_factory was read as no default."""
    from onnxcomp.registry import describe_passes

    options = {o["name"]: o["default"] for row in describe_passes() if row["name"] == "prune-channels" for o in row["options"]}
    assert options["layer_ratios"] == {} and options["skip"] == [] and options["round_to"] == 16
