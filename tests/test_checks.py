"""lensexp.checks: one-line option errors naming the full config key, and the dict flattener."""

from __future__ import annotations

import pytest

from lensexp.checks import check_choice, check_int, flatten
from lensexp.errors import LensexpError


def test_check_choice_returns_the_value_or_names_option_and_choices():
    assert check_choice("model.generator.activation", "relu", ("prelu", "relu")) == "relu"
    with pytest.raises(LensexpError) as err:
        check_choice("model.generator.activation", "gelu", ("prelu", "leakyrelu", "relu"))
    assert str(err.value) == (
        "model.generator.activation=gelu: not a valid value; use one of prelu|leakyrelu|relu."
    )


@pytest.mark.parametrize("value", [0, -3, 2.0, "4", True, None])
def test_check_int_refuses_small_or_non_integers_in_one_line(value):
    with pytest.raises(LensexpError) as err:
        check_int("data.batch_size", value, 1)
    assert str(err.value) == f"data.batch_size={value}: must be an integer >= 1."


def test_check_int_returns_the_value():
    assert check_int("model.generator.n_blocks", 0, 0) == 0
    assert check_int("data.batch_size", 64, 1) == 64


def test_flatten_nested_mappings_with_either_separator():
    tree = {"psnr": 30.0, "bicubic": {"psnr": 28.0, "per_class": {"no": 1}}, "empty": {}, 3: [1]}
    assert flatten(tree, "/") == {
        "psnr": 30.0,
        "bicubic/psnr": 28.0,
        "bicubic/per_class/no": 1,
        "3": [1],
    }
    assert list(flatten(tree, ".")) == ["psnr", "bicubic.psnr", "bicubic.per_class.no", "3"]
    assert flatten(tree, ".", keep_empty=True)["empty"] == {}
