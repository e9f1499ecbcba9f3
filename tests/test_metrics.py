"""pl_energy.metrics: per-layer agreement against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pl_energy.metrics import layer_agreement, layer_of


def test_layer_of_is_the_top_level_child():
    assert layer_of("3.0.weight") == "3" and layer_of("10.bias") == "10" and layer_of("head.weight") == "head"


def test_layer_agreement_by_hand():
    reference = {"0.weight": torch.tensor([3.0, 0.0]), "0.bias": torch.tensor([4.0]),
                 "1.0.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                 "10.weight": torch.tensor([2.0])}
    update = {"0.weight": torch.tensor([3.0, 0.5]), "0.bias": torch.tensor([4.0]),
              "1.0.weight": torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
              "10.weight": torch.tensor([-2.0]),
              "frozen.weight": torch.tensor([9.0])}  # not in the reference: not compared
    result = layer_agreement(update, reference)
    assert list(result.layers) == ["0", "1", "10"]  # "10" is not part of layer "1"
    # layer 0: r = (3, 0, 4), u = (3, 0.5, 4): |u - r| = 0.5, |r| = 5, u.r = 25, |u| = sqrt(25.25)
    assert result.layers["0"]["rel_error"] == pytest.approx(0.1, rel=1e-12)
    assert result.layers["0"]["cosine"] == pytest.approx(25 / (5 * math.sqrt(25.25)), rel=1e-12)
    # layer 1: r = (1, 0, 0, 1), u = (1, 1, 0, 1): |u - r| = 1, |r| = sqrt 2, u.r = 2, |u| = sqrt 3
    assert result.layers["1"]["rel_error"] == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    assert result.layers["1"]["cosine"] == pytest.approx(2 / math.sqrt(6), rel=1e-12)
    # layer 10: u = -r: |u - r| / |r| = 2, cosine -1
    assert result.layers["10"]["rel_error"] == pytest.approx(2.0) and result.layers["10"]["cosine"] == pytest.approx(-1.0)
    assert result.worst_layer == "10" and result.worst_rel_error == pytest.approx(2.0)
    # without layer 10, layer 1 is the worst
    del reference["10.weight"]
    assert (layer_agreement(update, reference).worst_layer, layer_agreement(update, reference).worst_rel_error) == \
        ("1", pytest.approx(1 / math.sqrt(2)))


def test_a_nan_layer_is_the_worst_and_an_empty_reference_is_refused():
    reference = {"0.weight": torch.tensor([1.0]), "1.weight": torch.tensor([1.0])}
    result = layer_agreement({"0.weight": torch.tensor([5.0]), "1.weight": torch.tensor([math.nan])}, reference)
    assert result.worst_layer == "1" and math.isnan(result.worst_rel_error)
    with pytest.raises(ValueError, match="no parameters"):
        layer_agreement({}, {})


def test_a_layer_far_off_hides_in_the_global_cosine_not_in_the_worst_layer():
    """The case of issue 24: a layer with small gradients 100% off, the global cosine 0.9999."""
    from pl_energy.metrics import gradient_agreement

    reference = {"0.weight": torch.full((100,), 1e-3), "1.weight": torch.ones(100)}
    update = {"0.weight": torch.zeros(100), "1.weight": torch.ones(100)}
    assert gradient_agreement(update, reference)["cosine"] > 0.9999
    result = layer_agreement(update, reference)
    assert result.worst_layer == "0" and result.worst_rel_error == pytest.approx(1.0)
