"""Tests for jkt.train.methods: the named methods of Tables 1 and 3."""

import pytest
from train_fixtures import one_line

import jkt.train
from jkt.train import methods
from jkt.train.objective import Objective


def test_table1_methods_in_the_papers_order_with_unit_weights():
    assert methods.TABLE1_METHODS == ("ce", "ce+act", "ce+jac", "ce+act+jac", "act", "act+jac")
    assert set(methods.METHOD_LABELS) == set(methods.METHODS) >= set(methods.TABLE1_METHODS)
    o = methods.METHODS["ce+act+jac"]
    assert (o.ce, o.act, o.jac, o.estimator) == (1, 1, 1, "label")
    assert methods.METHODS["act"].ce == 0
    top = methods.method_objective("ce+jac", estimator="top")
    assert (top.ce, top.jac, top.estimator) == (1, 1, "top")


def test_transfer_methods_and_their_objectives():
    assert methods.TRANSFER_METHODS == (
        "ce", "oracle", "ce+act", "ce+act+jac", "ce+act+att", "ce+act+att+attjac")
    assert tuple(methods.TRANSFER_LABELS) == methods.TRANSFER_METHODS
    pairs, jac_pair = (("pool2", "stage1"), ("pool3", "stage2")), ("pool2", "stage1")
    got = {m: methods.transfer_objective(m, weight=10.0, att_pairs=list(pairs),
                                         att_jac_pair=jac_pair, pool_fraction=None)
           for m in methods.TRANSFER_METHODS}
    common = dict(ce=10.0, estimator="top", pool_fraction=None)
    assert got["ce"] == got["oracle"] == Objective(**common)
    assert got["ce+act"] == Objective(act=10.0, **common)
    # App. 10.2: the Jacobian of the attention map at feature level 1, eq. 10, no
    # attention matching; the output-Jacobian reading by name.
    assert got["ce+act+jac"] == Objective(act=10.0, att_jac=10.0, att_jac_pair=jac_pair,
                                          **common)
    output_row = methods.transfer_objective("ce+act+jac", weight=10.0, att_pairs=list(pairs),
                                            att_jac_pair=jac_pair, pool_fraction=None,
                                            jacobian_row="output")
    assert output_row == Objective(act=10.0, jac=10.0, **common)
    with pytest.raises(ValueError, match="unknown jacobian_row 'bogus'; valid: attention_map"):
        methods.transfer_objective("ce+act+jac", jacobian_row="bogus")
    assert got["ce+act+att"] == Objective(act=10.0, att=10.0, att_pairs=pairs, **common)
    assert got["ce+act+att+attjac"] == Objective(act=10.0, att=10.0, att_jac=10.0,
                                                 att_pairs=pairs, att_jac_pair=jac_pair,
                                                 **common)
    assert methods.transfer_objective("ce+act").pool_fraction == 0.2
    with pytest.raises(ValueError, match="unknown method 'bogus'; valid: ce, oracle"):
        methods.transfer_objective("bogus")


def test_registry_is_exported_from_jkt_train():
    for name in methods.__all__:
        assert getattr(jkt.train, name) is getattr(methods, name), name


def test_config_errors_are_one_clear_line():
    with pytest.raises(ValueError) as excinfo:
        methods.method_objective("bogus")
    assert "unknown method 'bogus'" in one_line(excinfo)
