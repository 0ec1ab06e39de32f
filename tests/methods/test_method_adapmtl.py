"""AdapMTL / STR: the soft threshold against hand computation and gradcheck, the reference's adaptive task
weights on a synthetic loss sequence, the exact target controller, a learned split on a toy, the faithful
freeze, and tiny cells end to end (targets 0.5 / 0.8 / 0.9 / 0.95, logs, TensorBoard, result.json)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

import mtlprune.methods.adapmtl  # registers adapmtl, its ablations and str; SLICE patched below
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.train import StepRunner
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.adapmtl import (
    STR,
    AdapMTL,
    AdapMTLCallback,
    AdapMTLFixedWeights,
    AdapMTLParams,
    AdapMTLSingleThreshold,
    AdaptiveWeighting,
    FixedWeightsParams,
    HostCopy,
    SingleThresholdParams,
    STRParams,
    TargetSchedule,
    ThresholdBank,
    _Plan,
    _SoftThreshold,
    soft_threshold,
    threshold_of,
)
from mtlprune.registry import ARCHS, METHODS
from mtlprune.spec import TrainSpec
from mtlprune.store import Store
from tests.helpers import TASKS3, load_masks, tiny_matrix

# ------------------------------------------------------------------------------ reparameterisation


def test_soft_threshold_equals_hand_computation():
    tau = 1.0 / (1.0 + math.exp(2.0))  # sigmoid(−2) = 0.11920292202211755
    tau32 = float(torch.tensor(tau, dtype=torch.float32))
    w = torch.tensor([0.5, -0.2, 0.05, -0.01, 0.3, -tau32, 0.0], dtype=torch.float32)
    out = soft_threshold(w, torch.tensor(-2.0))
    # sign(w)·(|w| − τ) for the three survivors, exact zeros for the rest (|w| = τ included).
    expected = [0.5 - tau32, -(0.2 - tau32), 0.0, 0.0, 0.3 - tau32, 0.0, 0.0]
    assert out.tolist() == pytest.approx(expected, abs=1e-7)
    assert [float(x) for x in out[2:4]] == [0.0, 0.0] and out[5] == 0 and out[6] == 0
    # The reference's own expression (sparseFunction): sign(W)·ReLU(|W| − torch.sigmoid(s)), s float32.
    s = torch.tensor(-2.0)
    assert torch.equal(out, torch.sign(w) * torch.relu(torch.abs(w) - torch.sigmoid(s)))
    assert out.dtype == torch.float32


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (ties to even), as a Python float."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _sigmoid_f32_by_hand(s: float) -> float:
    """1 / (1 + exp(−s)) with each of the three operations rounded to float32, as the CPU kernel computes
    torch.sigmoid of a float32 0-dim tensor. exp is exact in float64 up to 2^-53 relative, then rounded; +
    and / on float32 operands are exactly rounded through float64 (53 >= 2·24 + 2 bits)."""
    e = _f32(math.exp(-s))
    return _f32(1.0 / _f32(1.0 + e))


def _clear_of_a_tie(s: float, margin: float = 0.05) -> bool:
    """Whether exp(−s) lies more than ``margin`` float32 ulps from a rounding midpoint: there every exp of
    less than 0.55 ulp error (glibc's expf: 0.502) rounds it the same way, so the hand value is the
    kernel's."""
    x = math.exp(-s)
    lo = float(np.nextafter(np.float32(x), np.float32(-np.inf))) if _f32(x) > x else _f32(x)
    hi = float(np.nextafter(np.float32(lo), np.float32(np.inf)))
    return abs((x - lo) / (hi - lo) - 0.5) > margin


def _ulps(a: float, b: float) -> int:
    return abs(int(np.float32(a).view(np.int32)) - int(np.float32(b).view(np.int32)))


def test_threshold_is_the_references_float32_sigmoid_not_a_rounded_float64_one():
    """τ = torch.sigmoid(s) on the float32 logit, as the reference's sparseFunction: against the hand
    float32 derivation on a grid of logits, where float64-then-round (the old τ) is 1 or 2 ulp away."""
    grid = [k / 16 for k in range(-320, 81)]  # −20 … 5, exact in float32
    clear = [s for s in grid if _clear_of_a_tie(s)]
    old = {s: _f32(1.0 / (1.0 + math.exp(-s))) for s in clear}
    differs = [s for s in clear if old[s] != _sigmoid_f32_by_hand(s)]
    assert len(clear) > 300 and len(differs) > 50  # the grid tells the two apart: the test means something
    assert {_ulps(old[s], _sigmoid_f32_by_hand(s)) for s in differs} == {1, 2}
    for s in clear:
        tau = _sigmoid_f32_by_hand(s)
        assert threshold_of(s) == threshold_of(torch.tensor(s)) == tau, s
        assert threshold_of(s + 0.25, offset=-0.25) == tau, s  # s + b summed in float64, rounded once
    for s in grid:  # every grid point, ties included: the reference's own call
        assert threshold_of(s) == float(torch.sigmoid(torch.tensor(s, dtype=torch.float32))), s
    # Golden: the reference's MobileNetV2 s_init, −18: float32 0x1.05a62ap-26; the old τ 0x1.05a628p-26.
    assert threshold_of(-18.0).hex() == "0x1.05a62a0000000p-26" == _sigmoid_f32_by_hand(-18.0).hex()
    assert old[-18.0].hex() == "0x1.05a6280000000p-26"
    assert threshold_of(-15.0).hex() == "0x1.4875c40000000p-22"  # its ResNet34 s_init (both agree there)


def test_thresholded_weights_are_the_references_where_the_old_threshold_differs():
    """At s = −18 a weight equal to the reference's τ is pruned (|w| − τ = 0) and the next float32 survives
    shrunk by τ; the old, 1 ulp smaller threshold kept the first. Several thresholds in one fused pass (40
    layer groups: the CPU sigmoid kernel vectorises from 32 elements) each get the 0-dim value."""
    tau = _sigmoid_f32_by_hand(-18.0)
    above = float(np.nextafter(np.float32(tau), np.float32(1.0)))
    w = torch.tensor([tau, -tau, above, -above, 0.5, 0.0], dtype=torch.float32)
    s = torch.tensor(-18.0)
    out = soft_threshold(w, s)
    reference = torch.sign(w) * torch.relu(torch.abs(w) - torch.sigmoid(s))
    assert torch.equal(out, reference) and torch.equal(out != 0, reference != 0)
    assert out.tolist() == [0.0, 0.0, _f32(above - tau), -_f32(above - tau), _f32(0.5 - tau), 0.0]
    old_kept = (w.abs() - _f32(1.0 / (1.0 + math.exp(18.0)))) > 0
    assert old_kept[:2].all() and not (out[:2] != 0).any()  # the old τ kept ±τ: a different mask
    # 40 layer groups at once (−15: the reference's s_init, where this CPU's vectorised kernel is 1 ulp off).
    torch.manual_seed(0)
    backbone = nn.Sequential(*[nn.Linear(4, 4, bias=False) for _ in range(38)])
    model = MTLModel(backbone, {"a": _Head(4, 2), "b": _Head(4, 2)})
    bank = _bank(model, group_of=lambda name: name)
    logits = [-18.0, -15.0, -5.0, -2.0] * 10
    with torch.no_grad():
        for p, value in zip(bank.logits, logits, strict=True):
            p.fill_(value)
    assert len(bank.logits) == 40
    assert bank.taus() == tuple(float(torch.sigmoid(torch.tensor(v))) for v in logits)  # the 0-dim call
    hand = {v: _sigmoid_f32_by_hand(v) for v in logits if _clear_of_a_tie(v)}
    assert set(hand) == {-18.0, -5.0, -2.0}
    assert all(tau == hand[v] for tau, v in zip(bank.taus(), logits, strict=True) if v in hand)


def test_gradient_closed_form():
    s = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, -0.2, 0.05, -0.01, 0.3], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    (soft_threshold(w, s) * c).sum().backward()
    tau = 1.0 / (1.0 + math.exp(2.0))
    assert w.grad.tolist() == [1.0, 2.0, 0.0, 0.0, 5.0]  # dŴ/dW = 1[|W| > τ]
    # dL/ds = −g′(s)·Σ c·sign(W)·1[|W| > τ] = −τ(1 − τ)·(1 − 2 + 5)
    assert float(s.grad) == pytest.approx(-4.0 * tau * (1.0 - tau), rel=1e-12)


def _away_from_kink(shape, tau: float, seed: int) -> torch.Tensor:
    w = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 0.5
    w = torch.where((w.abs() - tau).abs() < 1e-2, w + 0.05, w)
    assert float(((w.abs() - tau).abs()).min()) > 1e-3 and (w.abs() < tau).any() and (w.abs() > tau).any()
    return w.requires_grad_()


def test_gradcheck_single_tensor():
    s = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    w = _away_from_kink((4, 3, 2), threshold_of(-1.0), seed=0)
    assert torch.autograd.gradcheck(lambda w, s: soft_threshold(w, s), (w, s))
    assert torch.autograd.gradcheck(lambda w, s: soft_threshold(w, s, offset=0.5), (w, s))


def test_gradcheck_fused_tensors_sharing_thresholds():
    """Three tensors, the first two share logit s0: the fused pass the model uses, checked as a whole."""
    s0 = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    s1 = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    w1 = _away_from_kink((3, 4), threshold_of(-1.0), seed=1)
    w2 = _away_from_kink((5,), threshold_of(-1.0), seed=2)
    w3 = _away_from_kink((2, 2, 3), threshold_of(-1.5), seed=3)
    plan = _Plan([0, 0, 1], 2)

    def fused(w1, w2, w3, s0, s1):
        taus = (threshold_of(s0.detach()), threshold_of(s1.detach()))
        return _SoftThreshold.apply(plan, taus, w1, w2, w3, s0, s1)

    assert torch.autograd.gradcheck(fused, (w1, w2, w3, s0, s1))
    # The backward also counted the non-zeros of each Ŵ.
    outs = fused(w1, w2, w3, s0, s1)
    sum(o.sum() for o in outs).backward()
    assert plan.nonzero.tolist() == [float((o != 0).sum()) for o in outs]


def test_fused_tensors_of_mixed_dtypes_sum_their_dots_in_float64():
    """A float32 and a float64 weight under one threshold: the per-tensor dots go into a float64 table
    (copied, not rounded to either dtype), so the count and the threshold gradient are exact."""
    s = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    tau = threshold_of(s.detach())
    w32 = torch.tensor([0.5, -0.1, -2.0, 0.3], dtype=torch.float32, requires_grad=True)
    w64 = torch.tensor([[0.1, -0.75], [1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    plan = _Plan([0, 0], 1)
    out32, out64 = _SoftThreshold.apply(plan, (tau,), w32, w64, s)
    (out32 * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward(retain_graph=True)
    (out64 * 10).sum().backward()
    assert plan.dots.dtype == torch.float64 and plan.nonzero.tolist() == [3.0, 2.0]
    assert w32.grad.tolist() == [1.0, 0.0, 3.0, 4.0] and w64.grad.tolist() == [[0.0, 10.0], [10.0, 0.0]]
    # −τ(1 − τ)·Σ upstream·sign over the survivors: 1·1 + 3·(−1) + 4·1 + 10·(−1) + 10·1 (two backward calls)
    assert float(s.grad) == pytest.approx(-tau * (1 - tau) * (1 - 3 + 4 - 10 + 10), rel=1e-12)


def _reference_threshold(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The reference's sparseFunction (models/Deeplab_ResNet34.py:13-14), plain autograd."""
    return torch.sign(w) * torch.relu(torch.abs(w) - torch.sigmoid(s))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_backward_in_slices_is_the_references_autograd(monkeypatch, layout):
    """The backward goes through each tensor in slices (SLICE elements, here 64 so that a tensor spans
    several and ends in a partial one) in memory order: weight gradients equal to autograd of the
    reference's expression, the threshold gradient within float64 rounding, counts exact, and dL/dW laid
    out as W."""
    monkeypatch.setattr(mtlprune.methods.adapmtl, "SLICE", 64)
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(6, 5, 3, 3, dtype=torch.float64, generator=gen) * 0.5  # 270 = 4 slices + 14
    w = {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(0, 1),
    }[layout].requires_grad_()
    s = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(w.shape, dtype=torch.float64, generator=gen)
    plan = _Plan([0], 1)
    (out,) = _SoftThreshold.apply(plan, (threshold_of(s.detach()),), w, s)
    (out * upstream).sum().backward()
    grad_w, grad_s = w.grad, s.grad
    w.grad = s.grad = None
    want = _reference_threshold(w, s)
    (want * upstream).sum().backward()
    assert torch.equal(out, want) and torch.equal(grad_w, w.grad)
    assert float(grad_s) == pytest.approx(float(s.grad), rel=1e-12)
    assert plan.nonzero.tolist() == [float((want != 0).sum())] and 0 < plan.nonzero[0] < w.numel()
    assert grad_w.stride() == w.stride()  # every dense layout is kept


@pytest.mark.parametrize("slice_", [None, 3])
@pytest.mark.parametrize("tau", [0.11920292, 3.0590232e-07, 0.0])
def test_the_backward_reads_the_pruning_off_the_output_exactly_at_the_kink(monkeypatch, tau, slice_):
    """The backward takes 1[|W| > τ] and sign(Ŵ) from Ŵ alone: equal to the reference's autograd element
    for element at the threshold's float neighbours, at ±τ itself, at subnormal and infinite weights, and at
    τ = 0 (an offset of −1e4), where float W − τ comes closest to rounding to zero; in one piece and in
    slices of 3."""
    if slice_ is not None:
        monkeypatch.setattr(mtlprune.methods.adapmtl, "SLICE", slice_)
    t = torch.tensor(tau, dtype=torch.float32)
    up, down = torch.nextafter(t, torch.tensor(math.inf)), torch.nextafter(t, torch.tensor(0.0))
    tiny = torch.tensor(1.4e-45)  # the smallest float32 subnormal
    values = [t, up, down, torch.nextafter(up, torch.tensor(math.inf)), tiny, torch.tensor(0.0)]
    values += [torch.tensor(math.inf), torch.tensor(0.5)]
    w = torch.stack(values + [-v for v in values]).requires_grad_()
    logit = torch.tensor(0.0, requires_grad=True)
    upstream = torch.arange(1.0, w.numel() + 1)
    (out,) = _SoftThreshold.apply(_Plan([0], 1), (tau,), w, logit)
    (out * upstream).sum().backward()
    got_w, got_s = w.grad.clone(), float(logit.grad)
    w.grad = None
    kept = w.detach().abs() > t
    assert torch.equal(got_w, upstream * kept)  # dŴ/dW = 1[|W| > τ], the float test itself
    assert torch.equal(out != 0, kept)
    want_s = -tau * (1.0 - tau) * float((upstream * torch.sign(w.detach()) * kept).sum())
    assert got_s == pytest.approx(want_s, rel=1e-6)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


@pytest.mark.parametrize("tau", [0.11920292, 3.0590232e-07, 0.0])
def test_device_thresholds_give_the_float_thresholds_values_and_gradients_bit_for_bit(tau):
    """On a GPU the fused pass takes τ as a device tensor (W − clamp(W, −τ, τ), no wait for the device):
    the same Ŵ (bit for bit but the sign of a zero, which softshrink's vectorised CPU kernel may write as
    −0), weight gradients and non-zero counts as softshrink at the float τ, and the same threshold
    gradient, at τ's float neighbours, ±τ, subnormal, infinite and NaN weights."""
    t = torch.tensor(tau, dtype=torch.float32)
    up, down = torch.nextafter(t, torch.tensor(math.inf)), torch.nextafter(t, torch.tensor(0.0))
    values = [t, up, down, torch.tensor(1.4e-45), torch.tensor(0.0), torch.tensor(math.inf)]
    values += [torch.tensor(0.5), torch.tensor(math.nan)]
    noise = torch.randn(200, generator=torch.Generator().manual_seed(0)) * 0.2
    base = torch.cat([torch.stack(values + [-v for v in values]), noise])
    upstream = torch.arange(1.0, base.numel() + 1)
    results = []
    for taus in ((tau,), torch.tensor([tau])):
        w = base.clone().requires_grad_()
        logit = torch.tensor(0.0, requires_grad=True)
        plan = _Plan([0], 1)
        (out,) = _SoftThreshold.apply(plan, taus, w, logit)
        (out.nan_to_num(0.0) * upstream).sum().backward()
        results.append((out, w.grad, logit.grad, plan.nonzero))
    (out_f, gw_f, gs_f, nz_f), (out_t, gw_t, gs_t, nz_t) = results
    assert torch.equal(_bits(out_t + 0.0), _bits(out_f + 0.0))  # −0 + 0 = +0: zeros compared as numbers
    assert (out_t == 0).sum() >= 6
    assert torch.equal(_bits(gw_t), _bits(gw_f)) and torch.equal(gs_t, gs_f) and torch.equal(nz_t, nz_f)
    assert torch.equal(out_f[: 2 * len(values)] != 0, ~(base[: 2 * len(values)].abs() <= tau))


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ),
    ],
)
def test_a_bank_with_device_thresholds_trains_exactly_as_with_float_thresholds(monkeypatch, device):
    """The whole training path with τ as a device tensor (the GPU's path; forced on the CPU), the counts
    and thresholds read back through HostCopy after the step: logits, weights and every logged scalar equal
    to the float path's (forced on CUDA), under the target controller and under the faithful freeze."""
    runs = []
    for floats in (True, False):
        monkeypatch.setattr(mtlprune.methods.adapmtl, "_floats_on", lambda device, floats=floats: floats)
        for faithful in (False, True):
            model = _toy().to(device)
            bank = _bank(model, s_init=-3.0)
            schedule = None if faithful else TargetSchedule(0.5, 40, 0.1, 0.6, every=3)
            if schedule is not None:
                bank.solve_offset(schedule.sparsity(0))
            weighting = AdaptiveWeighting(model.tasks, 5, 3, 2)
            callback = AdapMTLCallback(bank, model.tasks, {}, weighting, schedule, 0.2 if faithful else None)
            bank.install()
            record: list = []
            _train_toy(model, callback, 40, lr=2e-2, wd=5e-2, record=record, device=device)
            assert isinstance(bank._last_taus, tuple) and (bank.plan.nonzero_host is not None)
            model(torch.zeros(1, 16, device=device))
            assert isinstance(bank._last_taus, HostCopy) != floats  # the path taken
            bank.remove()
            runs.append((record, {k: v.clone() for k, v in model.state_dict().items()}))
    float_runs, device_runs = runs[:2], runs[2:]
    for (want_record, want_state), (got_record, got_state) in zip(float_runs, device_runs, strict=True):
        assert got_record == want_record
        assert want_state.keys() == got_state.keys()
        assert all(torch.equal(want_state[k], got_state[k]) for k in want_state)
    assert any(r[2].get("adapmtl.frozen") for r in float_runs[1][0])  # the freeze was exercised
    assert float_runs[0][0][-1][2]["adapmtl.sparsity"] == pytest.approx(0.5, abs=0.05)


def test_training_passes_write_what_they_keep_and_evaluation_passes_do_not():
    """A training forward writes Ŵ into the bank's kept buffers (the same memory step after step: a fresh
    tensor of tens of MB costs more in page faults than the pass); an evaluation pass allocates afresh and
    leaves them alone; a graph whose Ŵ a later training pass overwrote refuses its backward instead of
    computing a wrong gradient."""
    model = _toy()
    bank = _bank(model)
    bank.install()
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    first = sum(o.sum() for o in model(x).values())
    kept = [b.data_ptr() for b in bank.plan.outputs]
    assert len(set(kept)) == len(kept) == 3
    first.backward()
    second = sum(o.sum() for o in model(x).values())
    assert [b.data_ptr() for b in bank.plan.outputs] == kept
    second.backward()
    before = [b.clone() for b in bank.plan.outputs]
    with torch.no_grad():
        model(x)
        fresh = bank.thresholded(0, bank.originals[0])
    assert fresh.data_ptr() not in kept
    assert all(torch.equal(a, b) for a, b in zip(before, bank.plan.outputs, strict=True))
    stale = sum(o.sum() for o in model(x).values())
    sum(o.sum() for o in model(x).values())  # overwrites the Ŵ that ``stale`` saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()


# ------------------------------------------------------------------------------------- weighting

LOSSES = [  # (a, b, c) per step
    (1.0, 2.0, 4.0),
    (2.0, 2.0, 2.0),
    (2.0, 4.0, 1.0),  # step 2 = start: first remembered value, no change yet
    (1.0, 2.0, 2.0),  # d = (1, 1, 0.5)
    (2.0, 2.0, 4.0),  # d = (0.5, 0, 0.5): two entries, the window (2) is not exceeded yet
    (4.0, 1.0, 4.0),  # d = (0.5, 1, 0): three > 2 → drop the oldest; m = (0.5, 0.5, 0.25)
    (2.0, 1.0, 2.0),  # d = (1, 0, 1): m = mean of the last two = (0.75, 0.5, 0.5)
]


def test_adaptive_weights_match_hand_computation_at_the_window_boundaries():
    weighting = AdaptiveWeighting(("a", "b", "c"), start=2, window=2, k=3)
    got = [weighting(i, dict(zip("abc", losses, strict=True))) for i, losses in enumerate(LOSSES)]
    for i in range(5):  # before start and until the window is exceeded (step start + window + 1 = 5)
        assert got[i] == {"a": 1.0, "b": 1.0, "c": 1.0}, i
    # Step 5: 3 · (0.5, 0.5, 0.25) / 1.25
    assert [got[5][t] for t in "abc"] == pytest.approx([1.2, 1.2, 0.6], abs=1e-12)
    # Step 6: 3 · (0.75, 0.5, 0.5) / 1.75
    assert [got[6][t] for t in "abc"] == pytest.approx([9 / 7, 6 / 7, 6 / 7], abs=1e-12)
    assert list(weighting.fifo["a"]) == [0.5, 1.0]


def test_adaptive_weights_with_the_reference_k_and_degenerate_losses():
    tasks = ("t1", "t2", "t3", "t4", "t5")
    weighting = AdaptiveWeighting(tasks, start=0, window=1, k=3)
    assert weighting(0, dict.fromkeys(tasks, 1.0)) == dict.fromkeys(tasks, 0.6)  # 3/5 before the window
    # Constant losses: every m_t = 0 → the uniform K/T (the reference would divide by zero).
    weighting(1, dict.fromkeys(tasks, 1.0))
    assert weighting(2, dict.fromkeys(tasks, 1.0)) == dict.fromkeys(tasks, 0.6)
    zero = AdaptiveWeighting(("a", "b"), start=0, window=1, k=2)
    zero(0, {"a": 1.0, "b": 1.0})
    zero(1, {"a": 0.0, "b": 2.0})  # d_a = 0 for a zero loss (guard); d_b = 0.5
    assert zero(2, {"a": 0.0, "b": 1.0}) == {"a": 0.0, "b": 2.0}  # m = (0, 1)


# ------------------------------------------------------------------------------------ controller


class _Head(nn.Module):
    def __init__(self, n_in: int = 32, n_out: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out, bias=False)

    def forward(self, x):
        return self.fc(x)


def _toy(seed: int = 0) -> MTLModel:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(16, 32, bias=False), nn.ReLU())
    return MTLModel(backbone, {"sensitive": _Head(), "insensitive": _Head()})


def _bank(model, s_init=-15.0, group_of=None) -> ThresholdBank:
    return ThresholdBank(
        model, model.prunable_parameters(), group_of or model.component_of, model.component_of, s_init
    )


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.77, 0.99])
def test_exact_solve_prunes_exactly_k_weights_and_keeps_the_learned_split(fraction):
    model = _toy()
    bank = _bank(model)
    with torch.no_grad():  # learned logits that differ per component
        for s, value in zip(bank.logits, (-3.0, -2.0, -4.5), strict=True):
            s.fill_(value)
    bank.solve_offset(fraction, exact=True)
    n = sum(bank.numel)
    assert sum(bank.zeros_now()) == round(fraction * n)
    taus = bank.taus()
    if fraction > 0:  # one offset b for all: logit(τ_g) − s_g is the same for every group
        offsets = [math.log(t / (1 - t)) - s for t, s in zip(taus, (-3.0, -2.0, -4.5), strict=True)]
        # up to float32: s_g + b is rounded to float32 (half an ulp: 2.4e-7 at |s + b| < 8), then τ
        assert offsets == pytest.approx([bank.offset] * 3, abs=1e-6)
    else:
        assert taus == (0.0, 0.0, 0.0)  # nothing pruned: the model is exactly the dense one


def test_subsampled_solve_is_close_and_exact_solve_is_exact_on_a_large_model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(512, 512, bias=False))
    model = MTLModel(backbone, {"a": _Head(512, 256), "b": _Head(512, 64)})
    bank = _bank(model)
    n = sum(bank.numel)
    assert n > 4 * (1 << 16)
    bank.solve_offset(0.8, exact=False)
    assert abs(sum(bank.zeros_now()) / n - 0.8) < 0.005
    bank.solve_offset(0.8, exact=True)
    assert sum(bank.zeros_now()) == round(0.8 * n)


def test_schedule_acts_from_t0_every_k_steps_at_t_end_and_after_the_last_step():
    schedule = TargetSchedule(0.9, total_steps=20, ramp_start=0.25, ramp_end=0.75, every=4)
    assert (schedule.start_step, schedule.end_step) == (5, 15)
    acts = [t for t in range(20) if schedule.acts_after(t)]
    # after step t the solve is for step t + 1: t + 1 ∈ {5, 9, 13, 15 (t_end), 17} and the last step 19
    assert acts == [4, 8, 12, 14, 16, 19]
    assert schedule.sparsity(5) == 0.0 and schedule.sparsity(15) == 0.9
    assert schedule.sparsity(10) == pytest.approx(0.9 * (1 - 0.5**3))


def _train_toy(model, callback, steps, lr=1e-2, wd=1e-4, seed=1, record=None, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    teacher = (torch.randn(16, 8, generator=gen) * 0.3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=wd)
    scalars = {}
    for step in range(steps):
        x = torch.randn(64, 16, generator=gen).to(device)
        y = x @ teacher
        out = model(x)
        losses = {
            "sensitive": ((out["sensitive"] - y) ** 2).mean(),
            "insensitive": 1e-3 * ((out["insensitive"] - y) ** 2).mean(),  # barely depends on its head
        }
        weights = callback.loss_weights(step, losses) or dict.fromkeys(model.tasks, 1.0)
        optimizer.zero_grad()
        sum(weights[t] * losses[t] for t in model.tasks).backward()
        callback.after_backward(step, None)
        before = [float(s.detach()) for s in callback.bank.logits]
        optimizer.step()
        scalars = callback.after_step(step, None)
        if record is not None:
            record.append((before, [float(s.detach()) for s in callback.bank.logits], scalars))
    return scalars


def test_insensitive_component_ends_sparser_than_a_sensitive_one():
    """Two heads of identical shape and init scale; one head's loss is scaled by 1e-3. Under the target
    controller (overall 50%), the insensitive head learns a higher threshold and ends much sparser."""
    model = _toy()
    bank = _bank(model)
    schedule = TargetSchedule(0.5, 300, 0.1, 0.6, every=1)
    bank.solve_offset(schedule.sparsity(0))
    callback = AdapMTLCallback(bank, model.tasks, {}, None, schedule, None)
    bank.install()
    scalars = _train_toy(model, callback, 300)
    summary = bank.summary(bank.zeros_now())
    assert summary["overall"] == 0.5
    assert summary["head/insensitive"] > summary["head/sensitive"] + 0.15
    logit = dict(zip(bank.group_names, (float(s.detach()) for s in bank.logits), strict=True))
    assert logit["head/insensitive"] > logit["head/sensitive"] + 0.5  # the split is in the learned logits
    assert scalars["adapmtl.threshold.head.insensitive"] > scalars["adapmtl.threshold.head.sensitive"]


def test_faithful_mode_freezes_thresholds_exactly_on_steps_at_or_above_the_ratio():
    model = _toy()
    # s_init puts the initial sparsity just under the ratio; weight decay then pushes the thresholds up.
    magnitudes = torch.cat([p.detach().abs().flatten() for p in model.prunable_parameters().values()])
    ratio = 0.3
    tau0 = float(torch.quantile(magnitudes, ratio - 0.02))
    bank = _bank(model, s_init=math.log(tau0 / (1 - tau0)))
    callback = AdapMTLCallback(bank, model.tasks, {}, None, None, freeze_at=ratio)
    bank.install()
    record = []
    _train_toy(model, callback, 60, lr=2e-2, wd=5e-2, record=record)
    frozen_steps = 0
    for before, after, scalars in record:
        at_ratio = scalars["adapmtl.sparsity"] >= ratio
        assert scalars["adapmtl.frozen"] == float(at_ratio)
        if at_ratio:
            assert after == before  # no loss update and no weight decay
            frozen_steps += 1
        else:
            assert all(a != b for a, b in zip(after, before, strict=True))
    assert 0 < frozen_steps < len(record)
    assert record[0][2]["adapmtl.sparsity"] < ratio  # it started below and reached the ratio


# --------------------------------------------------------------------------- parametrized model


def test_install_forward_optimizer_and_removal():
    model = ARCHS.get("deeplab_resnet34")({t: 3 for t in TASKS3}, width=0.125, head_width=0.03125)
    keys = list(model.state_dict())
    n_params = len(list(model.parameters()))
    reference = copy.deepcopy(model)
    bank = _bank(model, s_init=-5.0)
    bank.install()
    # Each shared threshold is listed once (deduplicated): the trainer's optimizer updates it once.
    assert len(list(model.parameters())) == n_params + 4
    runner = StepRunner(model, "nyuv2", TrainSpec(steps=1), torch.device("cpu"))
    in_optimizer = [p for group in runner.optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == n_params + 4
    assert sum(any(p is s for p in in_optimizer) for s in bank.logits) == 4
    # The fused pass inside a forward equals the hand formula applied layer by layer.
    taus = dict(zip(bank.group_names, bank.taus(), strict=True))
    with torch.no_grad():
        for name, p in reference.prunable_parameters().items():
            tau = float(torch.tensor(taus[model.component_of(name)]))
            p.copy_(torch.sign(p) * torch.relu(p.abs() - tau))
    model.eval(), reference.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert all(torch.equal(got[t], want[t]) for t in TASKS3)
    bank.remove()
    assert list(model.state_dict()) == keys  # thresholds gone, the normal keys back
    assert len(list(model.parameters())) == n_params
    for name, p in model.prunable_parameters().items():
        assert isinstance(p, nn.Parameter) and torch.equal(p, reference.prunable_parameters()[name])


# ---------------------------------------------------------------------------------------- params


def test_params_defaults_and_restrictions():
    p = AdapMTLParams()
    assert (p.start, p.s_init, p.weight_decay, p.control, p.thresholds) == (
        "dense",
        -15.0,
        None,
        "target",
        "component",
    )
    assert (p.adaptive_weighting, p.weighting_start, p.window, p.k) == (True, 0.25, 0.025, "tasks")
    assert (
        AdapMTLParams(control="faithful").k == 3 and AdapMTLParams(control="faithful", K="tasks").k == "tasks"
    )
    assert SingleThresholdParams().thresholds == "network" and SingleThresholdParams().adaptive_weighting
    assert not FixedWeightsParams().adaptive_weighting and FixedWeightsParams().thresholds == "component"
    assert (STRParams().thresholds, STRParams().adaptive_weighting) == ("layer", False)
    for bad in (
        lambda: AdapMTLParams(ramp_start=0.8, ramp_end=0.5),
        lambda: AdapMTLParams(adaptive_weighting=False, window=0.1),
        lambda: AdapMTLParams(control="faithful", ramp_end=0.9),
        lambda: AdapMTLParams(K=5),
        lambda: SingleThresholdParams(thresholds="component"),
        lambda: FixedWeightsParams(adaptive_weighting=True),
        lambda: FixedWeightsParams(weighting_start=0.1),
        lambda: STRParams(thresholds="component"),
        lambda: AdapMTLParams(sinit=-3),
    ):
        with pytest.raises(ValidationError):
            bad()


def test_registry_tolerance_start_and_budget():
    classes = {
        "adapmtl": AdapMTL,
        "adapmtl-single-threshold": AdapMTLSingleThreshold,
        "adapmtl-fixed-weights": AdapMTLFixedWeights,
        "str": STR,
    }
    for name, cls in classes.items():
        assert METHODS.get(name) is cls and cls.sparsity_tolerance == 0.01
    assert AdapMTL(AdapMTLParams(control="faithful")).sparsity_tolerance == 1.0  # reports what it reached
    assert AdapMTL(AdapMTLParams()).sparsity_tolerance == 0.01
    assert AdapMTL(AdapMTLParams(start="init")).starts_from == "init"
    assert STR(STRParams()).starts_from == "dense" and AdapMTL.starts_from == "dense"  # the class default
    train = TrainSpec(steps=100, weight_decay=1e-4)
    finetune = TrainSpec(steps=10, weight_decay=2e-4, lr=1e-4)
    ctx = SimpleNamespace(
        spec=SimpleNamespace(finetune=finetune),
        sparse_training_spec=lambda: train.model_copy(update={"steps": 110}),
    )
    spec = AdapMTL(AdapMTLParams()).training_spec(ctx)
    assert (spec.steps, spec.weight_decay, spec.lr) == (10, 2e-4, 1e-4)
    spec = AdapMTL(AdapMTLParams(start="init", weight_decay=5e-6)).training_spec(ctx)
    assert (spec.steps, spec.weight_decay, spec.betas) == (110, 5e-6, (0.5, 0.999))


# -------------------------------------------------------------------------- weight-decay search


class _SearchContext:
    """What ``AdapMTL._search`` uses of a context, with a stand-in for training: a run with weight decay wd
    zeroes the first ``zeroed[wd]`` raw weights (in name order) of the model it gets, so its final sparsity
    is known by hand; ``replayed`` calls return at once without training, as finished calls do on resume,
    and ``restore`` (call number → recorded values) is what the checkpoint's call restores."""

    def __init__(self, bank, target, replayed=(), restore=None, zeroed=None):
        self.bank, self.model, self.target, self.tasks = bank, bank.model, target, bank.model.tasks
        self.zeroed = zeroed or {1e-3: 256, 1e-2: 640, 1e-1: 1000}  # of the toy's 1024 prunable weights
        self.replayed, self.restore = set(replayed), restore or {}
        self.steps_used, self.calls, self.recorded, self.logs, self.seen = 0, 0, {}, [], []
        self.start = [w.detach().clone() for w in bank.originals]

    def train(self, spec, phase, callbacks):
        self.calls += 1
        if self.calls in self.replayed:
            return spec.steps
        if self.calls in self.restore:  # the call the checkpoint belongs to restores the owner's state
            self.recorded = dict(self.restore[self.calls])
            self.steps_used = spec.steps * (self.calls - 1)
        # every run starts from the start: weights and thresholds, whatever the run before did
        self.seen.append(all(torch.equal(w, s) for w, s in zip(self.bank.originals, self.start, strict=True)))
        self.seen[-1] &= all(float(s.detach()) == -15.0 for s in self.bank.logits)
        assert phase == "train" and callbacks[0].freeze_at == self.target and callbacks[0].schedule is None
        left = self.zeroed[spec.weight_decay]
        with torch.no_grad():
            for w in self.bank.originals:
                n = min(left, w.numel())
                w.view(-1)[:n] = 0.0
                left -= n
            for s in self.bank.logits:
                s.fill_(
                    -14.0
                )  # the thresholds moved too (τ 8e-7: nothing else pruned; reset for the next run)
        self.steps_used += spec.steps
        return spec.steps

    def record(self, **values):
        self.recorded.update(values)

    def log(self, **scalars):
        self.logs.append(scalars)


def _search(target, decays, **fake):
    model = _toy()
    bank = _bank(model)
    bank.install()
    ctx = _SearchContext(bank, target, **fake)
    method = AdapMTL(AdapMTLParams(control="faithful", wd_search=decays))
    callback = method._search(ctx, bank, TrainSpec(steps=7))
    return ctx, bank, callback


def test_weight_decay_search_stops_at_the_first_run_that_reaches_the_target():
    assert sum(_bank(_toy()).numel) == 1024  # 16·32 backbone + 2·32·8 heads
    ctx, bank, _ = _search(0.5, [1e-3, 1e-2, 1e-1])
    # 256/1024 = 0.25 < 0.5, then 640/1024 = 0.625 >= 0.5: the search stops; 1e-1 never runs.
    assert ctx.recorded["wd_search"] == [
        {"weight_decay": 1e-3, "sparsity": 0.25},
        {"weight_decay": 1e-2, "sparsity": 0.625},
    ]
    assert ctx.calls == 2 and ctx.steps_used == 14 and ctx.seen == [True, True]
    assert sum(bank.zeros_now()) == 640  # the kept run is the model
    assert ctx.logs == [
        {"adapmtl.search.weight_decay": 1e-3, "adapmtl.search.sparsity": 0.25},
        {"adapmtl.search.weight_decay": 1e-2, "adapmtl.search.sparsity": 0.625},
    ]
    # A target no run reaches: every run, the last one kept (1000/1024 = 0.9765625).
    ctx, bank, _ = _search(0.99, [1e-3, 1e-2, 1e-1])
    assert [r["sparsity"] for r in ctx.recorded["wd_search"]] == [0.25, 0.625, 0.9765625]
    assert ctx.calls == 3 and ctx.seen == [True, True, True] and sum(bank.zeros_now()) == 1000
    # The first run reaches it: one run.
    ctx, _, _ = _search(0.2, [1e-3, 1e-2])
    assert ctx.recorded["wd_search"] == [{"weight_decay": 1e-3, "sparsity": 0.25}] and ctx.calls == 1


def test_weight_decay_search_replayed_on_resume_goes_on_past_the_finished_calls():
    """Resumed in call 3: calls 1 and 2 return at once (spending nothing, measuring the start, whose
    sparsity is 0 here but could be anything) and the search must go on past them, whatever their model
    shows; call 3 restores the values calls 1 and 2 recorded."""
    before = [{"weight_decay": 1e-4, "sparsity": 0.1}, {"weight_decay": 1e-3, "sparsity": 0.25}]
    zeroed = {1e-4: 100, 1e-3: 256, 1e-2: 640}
    ctx, bank, _ = _search(
        0.0, [1e-4, 1e-3, 1e-2], replayed=(1, 2), restore={3: {"wd_search": before}}, zeroed=zeroed
    )
    # Target 0: a measured run would stop at once; the replayed calls are skipped, call 3 trains.
    assert ctx.calls == 3 and ctx.seen == [True]
    assert ctx.recorded["wd_search"] == [*before, {"weight_decay": 1e-2, "sparsity": 0.625}]
    assert ctx.steps_used == 21 and sum(bank.zeros_now()) == 640


def test_weight_decay_search_params_and_planned_steps():
    p = AdapMTLParams(control="faithful", wd_search=[0.0, 1e-6, 5e-5])
    assert p.wd_search == [0.0, 1e-6, 5e-5] and p.weight_decay is None
    for bad, message in (
        ({"wd_search": [1e-6]}, "belongs to control 'faithful'"),
        ({"control": "faithful", "wd_search": [1e-6], "weight_decay": 1e-4}, "not both"),
        ({"control": "faithful", "wd_search": [1e-5, 1e-6]}, "strictly ascending"),
        ({"control": "faithful", "wd_search": [1e-6, 1e-6]}, "strictly ascending"),
        ({"control": "faithful", "wd_search": [-1e-6]}, "finite and >= 0"),
        ({"control": "faithful", "wd_search": []}, "at least 1"),
    ):
        with pytest.raises(ValidationError, match=message):
            AdapMTLParams(**bad)
    cell = tiny_matrix(methods=[{"name": "adapmtl"}], sparsities=[0.9]).expand()[0]
    assert (cell.train.steps, cell.finetune.steps) == (6, 2)
    assert AdapMTL(p).planned_steps(cell) == 3 * 2  # the whole grid of finetune budgets: an upper bound
    assert AdapMTL(AdapMTLParams(control="faithful", start="init", wd_search=[0.0, 1.0])).planned_steps(
        cell
    ) == 2 * (6 + 2)
    assert AdapMTL(AdapMTLParams(control="faithful")).planned_steps(cell) == 2


# ------------------------------------------------------------------------------------ tiny cells

TARGETS = [0.5, 0.8, 0.9, 0.95]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("adapmtl"))
    runtime = {"device": "cpu", "log_every": 1, "tensorboard": True, "save_cell_models": True}
    main = tiny_matrix(methods=[{"name": "adapmtl"}], sparsities=TARGETS, runtime=runtime)
    assert run_matrix(main, store, show_progress=False).failed == {}
    # Same dense stage (shared from the store): STR and AdapMTL from init at 0.8.
    extra = tiny_matrix(
        methods=[{"name": "str"}, {"name": "adapmtl", "params": {"start": "init"}}],
        sparsities=[0.8],
        runtime=runtime,
    )
    assert run_matrix(extra, store, show_progress=False).failed == {}
    return store, {(c.method.label, c.target_sparsity): c for c in [*main.expand(), *extra.expand()]}


def _records(store, run_id):
    return [json.loads(line) for line in (store.run_dir(run_id) / "log.jsonl").open()]


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_target_control_hits_the_target_from_the_weights(cells, target):
    store, by_label = cells
    cell = by_label[("adapmtl", target)]
    result = store.result(cell.run_id)
    model = torch.load(store.run_dir(cell.run_id) / "model.pt", weights_only=True)
    masks = load_masks(store.run_dir(cell.run_id))
    assert not any("parametrizations" in k or "threshold" in k for k in model)
    zeros = sum(int((model[n] == 0).sum()) for n in masks)
    total = sum(m.numel() for m in masks.values())
    assert abs(zeros - round(target * total)) <= 5  # exact up to ties / fp32 rounding of the threshold
    assert abs(result.sparsity["achieved_sparsity"] - target) <= 0.01
    for name, mask in masks.items():
        assert torch.equal(mask, model[name] != 0), name
    state = result.method_state
    assert state["sparsity"] == pytest.approx(zeros / total)
    for task in TASKS3:
        assert state["sparsity_by_component"][f"head/{task}"] == pytest.approx(
            result.sparsity[f"sparsity.head.{task}"]
        )
    assert state["sparsity_by_component"]["backbone"] == pytest.approx(result.sparsity["sparsity.backbone"])
    assert set(state["thresholds"]) == {"backbone", *(f"head/{t}" for t in TASKS3)}
    assert all(0 < t < 1 for t in state["thresholds"].values())
    assert result.steps_method == 2 and result.starts_from == "dense"


@pytest.mark.slow
def test_every_step_logs_thresholds_sparsity_weights_and_losses(cells):
    store, by_label = cells
    run_id = by_label[("adapmtl", 0.9)].run_id
    steps = [r for r in _records(store, run_id) if r.get("phase") == "train" and "step" in r]
    assert [r["step"] for r in steps] == [0, 1]
    components = ["backbone", *(f"head.{t}" for t in TASKS3)]
    for record in steps:
        for key in [
            "adapmtl.sparsity",
            "adapmtl.offset",
            *(f"adapmtl.threshold.{c}" for c in components),
            *(f"adapmtl.sparsity.{c}" for c in components),
            *(f"adapmtl.weight.{t}" for t in TASKS3),
            *(f"loss.{t}" for t in TASKS3),
        ]:
            assert math.isfinite(record[key]), key
    # Step 0 trains the dense model (ramp from 0); the solve after it prunes the forward pass of step 1.
    assert steps[0]["adapmtl.sparsity"] == 0.0 and steps[1]["adapmtl.sparsity"] == pytest.approx(
        0.9, abs=0.01
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(store.run_dir(run_id) / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/adapmtl.sparsity",
        "train/adapmtl.threshold.backbone",
        "train/adapmtl.weight.normal",
    } <= tags
    assert [e.value for e in events.Scalars("train/adapmtl.sparsity")] == pytest.approx(
        [r["adapmtl.sparsity"] for r in steps]
    )


@pytest.mark.slow
def test_str_and_start_from_init(cells):
    store, by_label = cells
    str_cell = store.result(by_label[("str", 0.8)].run_id)
    assert abs(str_cell.sparsity["achieved_sparsity"] - 0.8) <= 0.001
    layers = str_cell.sparsity["layers"]
    assert set(str_cell.method_state["thresholds"]) == {n.removesuffix(".weight") for n in layers}
    record = _records(store, by_label[("str", 0.8)].run_id)[0]
    assert "adapmtl.threshold.backbone.conv1" in record and "adapmtl.weight.normal" in record
    assert str_cell.method_state["task_weights"] == dict.fromkeys(TASKS3, 1.0)
    init = store.result(by_label[("adapmtl(start=init)", 0.8)].run_id)
    assert init.starts_from == "init" and init.steps_method == 8 and init.steps_total == 8
    assert abs(init.sparsity["achieved_sparsity"] - 0.8) <= 0.001


@pytest.mark.slow
def test_best_val_selection_is_retargeted_on_the_selected_weights(tmp_path):
    """The trainer reloads the selected step's state dict (weights and thresholds, parametrized keys); the
    controller then solves b once more on those weights, so the target still holds."""
    data = dict(tiny_matrix().datasets[0].model_dump(exclude={"root"}), val_fraction=0.25)
    matrix = tiny_matrix(
        datasets=[data],
        methods=[{"name": "adapmtl"}],
        sparsities=[0.7],
        finetune={"steps": 3, "batch_size": 4},
        eval={"batch_size": 4, "selection": "best_val", "val_every": 1},
        runtime={"device": "cpu", "log_every": 1},
    )
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    (cell,) = matrix.expand()
    result = store.result(cell.run_id)
    assert 0 <= result.selection.selected_step <= 2
    masks = load_masks(store.run_dir(cell.run_id))
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int((~m).sum()) for m in masks.values()) - round(0.7 * total)) <= 5
    solved = [r for r in _records(store, cell.run_id) if "adapmtl.final_solve" in r]
    assert bool(solved) == (result.selection.selected_step != 2)


SEARCH = {"name": "adapmtl", "params": {"control": "faithful", "s_init": -6.0, "wd_search": [0.0, 0.3, 3.0]}}


class _Killed(BaseException):
    """Stands in for SIGKILL (not an Exception: no stage code records or survives it)."""


def _end_state(store: Store, run_id: str) -> dict:
    run_dir = store.run_dir(run_id)
    result = json.loads((run_dir / "result.json").read_text())
    model = torch.load(run_dir / "model.pt", weights_only=True)
    return {
        "metrics": result["metrics"],
        "method_state": result["method_state"],
        "steps": (result["steps_method"], result["steps_total"]),
        "log": (run_dir / "log.jsonl").read_text(),
        "model": {k: v.numpy().tobytes() for k, v in model.items()},
    }


@pytest.mark.slow
def test_faithful_weight_decay_search_in_a_cell_and_its_resume(tmp_path):
    """Target 0.3 from s_init −6 (τ 2.5e-3) on the tiny model: weight decay 0 ends below it, 0.3 above, so
    the search keeps the second run (3.0 never runs); the cell's weights are that run's, its steps are both
    runs'. Killed in the second run (and at its first step), the resumed cell ends exactly the same."""
    from mtlprune.engine.runner import run_stage
    from mtlprune.plan.stages import plan

    runtime = {"device": "cpu", "log_every": 1, "checkpoint_every": 2, "save_cell_models": True}
    matrix = tiny_matrix(
        methods=[SEARCH],
        sparsities=[0.3],
        finetune={"steps": 3, "batch_size": 4, "lr": 0.01},
        runtime=runtime,
    )
    dense, cell = plan(matrix)[:2]
    ref = Store(tmp_path / "ref")
    for stage in (dense, cell):
        assert run_stage(stage, ref, matrix.runtime).status == "done"
    result = ref.result(cell.run_id)
    tried = result.method_state["wd_search"]
    assert [r["weight_decay"] for r in tried] == [0.0, 0.3] and result.method_state["weight_decay"] == 0.3
    assert tried[0]["sparsity"] < 0.3 <= tried[1]["sparsity"]
    assert result.sparsity["achieved_sparsity"] == tried[1]["sparsity"] == result.method_state["sparsity"]
    assert (result.steps_method, result.steps_total) == (6, 6 + 6)  # two runs of 3; the dense stage's 6
    records = [json.loads(line) for line in (ref.run_dir(cell.run_id) / "log.jsonl").open()]
    assert [r["step"] for r in records if r.get("phase") == "train" and "step" in r] == [0, 1, 2] * 2
    searched = [r for r in records if "adapmtl.search.sparsity" in r]
    assert [(r["adapmtl.search.weight_decay"], r["adapmtl.search.sparsity"]) for r in searched] == [
        (r["weight_decay"], r["sparsity"]) for r in tried
    ]
    expected = _end_state(ref, cell.run_id)
    for n in (4, 5):  # the first step of the second run (its call's step-0 checkpoint), then mid-run
        store = Store(tmp_path / f"kill{n}")
        shutil.copytree(ref.run_dir(dense.run_id), store.run_dir(dense.run_id))
        shutil.copytree(ref.root / "data", store.root / "data")
        seen = [0]

        def progress(step: int, record: dict, n=n, seen=seen) -> None:
            seen[0] += 1
            if seen[0] == n:
                raise _Killed(f"killed at logged step {n}")

        with pytest.raises(_Killed):
            run_stage(cell, store, matrix.runtime, progress)
        assert run_stage(cell, store, matrix.runtime).status == "done"
        assert store.result(cell.run_id).resumed_from is not None
        assert _end_state(store, cell.run_id) == expected, n
