"""Tests for jkt.bench.methods: every benchmarked row is a valid step, and the Table-1
rows come from ``jkt.train``'s one method registry."""

import dataclasses

from jkt import models
from jkt.bench import methods
from jkt.train import TABLE1_METHODS, method_objective


def test_methods_are_valid():
    assert {"ce", "ce+act", "ce+act+jac:full", "vgg9:ce+jac_norm"} <= set(methods.METHODS)
    for m in methods.METHODS.values():
        assert m.student in models.MODELS
        assert (m.teacher is None) == (not m.objective.needs_teacher)


def test_table1_rows_come_from_the_method_registry():
    for e in methods.ESTIMATORS:
        assert methods.METHODS[f"ce+act+jac:{e}"].objective == method_objective(
            "ce+act+jac", estimator=e)
    assert methods.METHODS["ce+act+jac:label:norm"].objective == method_objective(
        "ce+act+jac", normalize=True)
    for name in ("ce", "ce+act"):
        assert methods.METHODS[name].objective == method_objective(name)
    assert methods.METHODS["vgg9:ce"].objective == method_objective("ce")
    assert methods.METHODS["vgg9:ce"].student == methods.TEACHER_ARCH


def test_proxies_cover_table1():
    assert set(methods.TABLE1_PROXY) == set(TABLE1_METHODS)
    assert set(methods.TABLE1_PROXY.values()) <= set(methods.METHODS)
    assert methods.TEACHER_PROXY in methods.METHODS
    for layout in methods.FUSED_LAYOUTS.values():
        assert set(layout) <= set(methods.METHODS)
    # every Table-1 method is trained by exactly one step of each fused layout
    for layout in methods.FUSED_LAYOUTS.values():
        trained = [x for name in layout
                   for x in (methods.METHODS[name].members or (name,))]
        assert sorted(trained) == sorted(TABLE1_METHODS), layout


def test_fused_rows_union_their_members():
    m = methods.METHODS["fused:jac-group"]
    assert m.runs == 3 and m.fusion_mode == "unroll"
    assert m.fused == tuple(method_objective(x) for x in m.members)
    assert m.objective.ce == m.objective.act == m.objective.jac == 1
    assert methods.METHODS["fused-vmap:table1"].members == tuple(TABLE1_METHODS)
    assert dataclasses.replace(m, fused=()).runs == 1
