"""The default path on any weights, any batch size, and models that name no input size.

Budgets (engine/verify.py): a fused unit or the logits pass when their error against float64 is
at most k × the original path's own fp32 error on the same inputs + a floor. These tests hold the
engine to the issue's bar on weights it never saw: trained-looking BatchNorm statistics, many
seeds, no fused unit reverted, and the optimised logits within 4× the original fp32 model's error
on fresh inputs (not the verification's own)."""
import copy

import pytest
import torch
import torch.nn as nn

import ferfuse
from ferfuse.engine import executors, winograd
from ferfuse import models
from ferfuse.engine.patterns.resnet_block import FusedBasicBlock
from ferfuse.engine.verify import budget, errors, original_error
from ferfuse.models import randomize_batchnorm
from helpers import UpstreamDAN, UpstreamMHAN, rel_error

LOGITS_K = 4  # the bar: optimised logits within 4× the original fp32 model's own error


def _errors_against_float64(model, optimised, x):
    """(original fp32 model's logits error, optimised model's), both against float64, same x."""
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        ref = reference(x.double())[0]
        return rel_error(model(x)[0], ref), rel_error(optimised(x)[0], ref)


def _check_seed(build, seed, batch=2):
    torch.manual_seed(seed)
    model = randomize_batchnorm(build(), seed=seed).eval()
    optimised = ferfuse.engine.optimize(copy.deepcopy(model))
    rep = ferfuse.report(optimised)
    assert not rep.reverted, f"seed {seed}: " + str(rep)
    assert rep.fused and rep.logits_rel_error <= rep.logits_budget
    size = getattr(model, "input_size", (3, 224, 224))
    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(100 + seed))
    original, fused = _errors_against_float64(model, optimised, x)
    assert fused <= LOGITS_K * original, f"seed {seed}: optimised {fused:.2e} vs original fp32 {original:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_upstream_dan_any_batchnorm_statistics(seed):
    _check_seed(lambda: UpstreamDAN(num_class=7, num_head=4), seed)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maca_net", "mhan", "hafem"])
@pytest.mark.parametrize("seed", range(5))
def test_family_any_batchnorm_statistics(name, seed):
    _check_seed(lambda: models.get(name), seed)


@pytest.mark.parametrize("target", ["features.5.1", "features.7.0"])
def test_a_corrupted_folded_bias_is_reverted(monkeypatch, target):
    """One folded bias off by 1e-3 relative (a wrong fold, a stale cache) must fail its budget."""
    real = FusedBasicBlock.fold

    def corrupted(self, device):
        folded = real(self, device)
        if self.names()[0] == target:
            bias = folded["conv2"].bias
            noise = torch.randn(bias.shape, generator=torch.Generator().manual_seed(0))
            folded["conv2"].bias = bias + 1e-3 * bias.norm() * noise / noise.norm()
        return folded

    monkeypatch.setattr(FusedBasicBlock, "fold", corrupted)
    model = ferfuse.engine.optimize(randomize_batchnorm(UpstreamDAN(), seed=3).eval())
    rep = ferfuse.report(model)
    assert [e.modules for e, _ in rep.reverted] == [[target]], str(rep)
    entry, why = rep.reverted[0]
    assert entry.rel_error > entry.budget and "over its budget" in why
    assert target not in [m for e in rep.fused for m in e.modules]


def test_report_shows_fused_original_and_budget():
    model = randomize_batchnorm(models.dan(), seed=2).eval().optimize()
    rep = ferfuse.report(model)
    for entry in rep.fused:
        k, floor, _ = budget("fp32", entry.form)
        assert entry.budget == pytest.approx(k * entry.baseline + floor)
        assert 0 < entry.rel_error <= entry.budget
    text = str(rep)
    assert "original" in text and "budget" in text and "random inputs (2, 3, 224, 224)" in text
    assert rep.logits_baseline > 0 and rep.logits_rel_error <= rep.logits_budget


def test_one_optimize_serves_every_batch_size():
    """The executor and the weight packing follow the input shape: batches 1, 2, 8, 32, 1 after
    one default optimize() all match float64 within the budget, and the report lists each shape."""
    model = randomize_batchnorm(models.dan(num_heads=2), seed=6).eval()
    optimised = copy.deepcopy(model).optimize()
    rep = ferfuse.report(optimised)
    for i, batch in enumerate((1, 2, 8, 32, 1)):
        x = torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(i))
        original, fused = _errors_against_float64(model, optimised, x)
        assert fused <= LOGITS_K * original + 1e-6, f"batch {batch}: {fused:.2e} vs {original:.2e}"
        assert rep.executor_for(x.shape) in rep.executors
    assert {shape[0] for shape, _ in rep.executor_by_shape} == {1, 2, 8, 32} and "(32, 3, 112, 112)" in str(rep)


def test_each_thread_count_times_its_own_executor():
    """A model optimised at one thread count and then called at another (a server that sets its
    threads after loading) times the executors again there: what is fastest at 2 threads need not
    be at 1, and the report lists each choice with its thread count."""
    model = randomize_batchnorm(models.dan(num_heads=2), seed=7).eval()
    optimised = copy.deepcopy(model).optimize()
    rep = ferfuse.report(optimised)
    threads = torch.get_num_threads()
    other = 2 if threads == 1 else 1
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    _errors_against_float64(model, optimised, x)
    try:
        torch.set_num_threads(other)
        original, fused = _errors_against_float64(model, optimised, x)
        assert fused <= LOGITS_K * original + 1e-6, f"{fused:.2e} vs {original:.2e} at {other} threads"
        assert rep.executor_for(x.shape) in rep.executors
    finally:
        torch.set_num_threads(threads)
    assert set(rep.executor_by_shape) == {((1, 3, 112, 112), threads), ((1, 3, 112, 112), other)}
    assert f"(1, 3, 112, 112) at {other} thread" in str(rep) and f"(1, 3, 112, 112) at {threads} thread" in str(rep)


def test_batches_up_to_the_next_power_of_two_share_one_timing():
    """A ragged stream of batch sizes times once per power of two: batch 7 after batch 5 runs on
    what batch 5 timed (executor, each conv's form, the Winograd GEMMs' engines), with no timing of
    its own, and matches float64 within the budget; batch 9 is timed."""
    model = randomize_batchnorm(models.dan(num_heads=2), seed=8).eval()
    optimised = copy.deepcopy(model).optimize()
    rep = ferfuse.report(optimised)
    shape = (3, 112, 112)
    _errors_against_float64(model, optimised, torch.randn(5, *shape, generator=torch.Generator().manual_seed(0)))
    forms, engines = len(executors.FORM_BY_PROBLEM), len(winograd.ENGINE_BY_PROBLEM)
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(1))
    original, fused = _errors_against_float64(model, optimised, x)
    assert fused <= LOGITS_K * original + 1e-6, f"batch 7: {fused:.2e} vs {original:.2e}"
    assert list(rep.executor_timings) == [((8, *shape), torch.get_num_threads())]
    assert (len(executors.FORM_BY_PROBLEM), len(winograd.ENGINE_BY_PROBLEM)) == (forms, engines)
    _errors_against_float64(model, optimised, torch.randn(9, *shape, generator=torch.Generator().manual_seed(2)))
    assert ((16, *shape), torch.get_num_threads()) in rep.executor_timings
    assert "(8, 3, 112, 112) at" in str(rep) and "rounded up to a power of two" in str(rep)


def test_a_mistimed_executor_choice_is_timed_again(monkeypatch):
    """A first-call timing that a burst of load skewed (the slower executor kept) is checked once
    against the calls that follow: when they run over RECHECK_MARGIN × the loser's timing, the
    shape is timed again on its next call, and the report says why. A sound choice stays."""
    costs = {"slow": 5.0, "fast": 1.0}  # ms a call takes on each executor
    skewed = [True]  # the first timing: a burst hit "fast"

    def timing(candidates, run, runs=executors.TIMED_RUNS):
        times = {"slow": 1.0, "fast": 2.0} if skewed.pop() else dict(costs)
        return min(times, key=times.get), times

    monkeypatch.setattr(executors, "fastest", timing)
    choice, shape = executors.ExecutorChoice(("slow", "fast")), (1, 3, 8, 8)
    x, key = torch.zeros(shape), executors.shape_key(shape)
    assert choice.for_input(x, lambda t: None) == "slow"
    for _ in range(executors.RECHECK_AFTER):
        assert choice.for_input(x, lambda t: None) == "slow"
        choice.observe(shape, costs["slow"])
    assert key not in choice.by_shape and "5.0 ms, against 2.0 ms timed on fast" in choice.retimed[key]
    skewed.append(False)
    assert choice.for_input(x, lambda t: None) == "fast"  # timed again, without the burst
    for _ in range(2 * executors.RECHECK_AFTER):  # checked once only
        choice.observe(shape, costs["fast"] * 10)
    assert choice.by_shape[key] == "fast"
    steady = executors.ExecutorChoice(("slow", "fast"))
    skewed.append(False)
    steady.for_input(x, lambda t: None)
    for _ in range(executors.RECHECK_AFTER):
        steady.observe(shape, costs["fast"] * 1.2)  # a little slower than timed: no re-timing
    assert steady.by_shape[key] == "fast" and not steady.retimed


def test_upstream_mhan_class_needs_no_arguments():
    """The upstream MHAN class names no input size and fails at 224: optimize() finds 112 itself."""
    model = randomize_batchnorm(UpstreamMHAN(), seed=1).eval()
    assert not hasattr(model, "input_size")
    ferfuse.engine.optimize(model)
    rep = ferfuse.report(model)
    assert rep.example_shape == (2, 3, 112, 112) and "first usual FER size" in rep.example_source
    assert "mhan_attention" in [e.pattern for e in rep.fused] and not rep.reverted, str(rep)


def test_no_usual_size_fits_names_the_sizes_tried():
    class OnlySixtyFour(nn.Module):  # a conv net whose head takes 64×64 inputs only
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 64 * 64, 2)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).flatten(1))

    with pytest.raises(ValueError, match=r"pass example_inputs.*224×224.*112×112.*48×48"):
        ferfuse.engine.optimize(OnlySixtyFour().eval())
    ferfuse.engine.optimize(OnlySixtyFour().eval(), example_inputs=torch.randn(2, 3, 64, 64))


class _Flattening(nn.Module):
    """A forward that only takes NCHW maps: `.view` of a channels_last map raises."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        y = self.body(x)
        return y.view(y.shape[0], -1)


def test_the_baseline_is_the_larger_of_the_two_layouts():
    """fp32's own error is measured on two summation orders (NCHW and channels_last run different
    oneDNN kernels), the budget on the larger; a forward that cannot take channels_last gives one."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    x = torch.randn(4, 64, 14, 14)
    with torch.no_grad():
        ref = copy.deepcopy(body).double()(x.double())
        nchw = errors(body(x), ref)[1]
        channels_last = errors(body(x.contiguous(memory_format=torch.channels_last)), ref)[1]
        assert 0 < min(nchw, channels_last)
        assert original_error(body, (x,), ref) == max(nchw, channels_last)
        flat = _Flattening(body)
        with pytest.raises(RuntimeError):
            flat(x.contiguous(memory_format=torch.channels_last))
        assert original_error(flat, (x,), ref.flatten(1)) == errors(flat(x), ref.flatten(1))[1] == nchw
