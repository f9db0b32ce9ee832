"""An optimised model refuses bad input clearly and before any kernel runs, propagates NaN/Inf as
the reference does, answers an empty batch as the original does, answers alike from several
threads, does not grow memory over calls, saves and loads whole, and lets hooks inside its fused
units see their modules' calls."""
import copy
import io
import threading
import warnings

import pytest
import torch
import torch.nn as nn

import ferfuse
from ferfuse import models
from ferfuse.engine import executors
from ferfuse.models import randomize_batchnorm
from helpers import UpstreamDAN, assert_close, efficientnet_stages, fp32_budget


@pytest.fixture(scope="module")
def dan():
    torch.manual_seed(0)
    return ferfuse.optimize(randomize_batchnorm(UpstreamDAN(num_head=2), seed=7).eval())


@pytest.mark.parametrize("bad,error,expected", [
    (torch.randn(3, 224, 224), ValueError, r"4-D image batch B×3×H×W, got shape \(3, 224, 224\)"),
    (torch.randn(1, 4, 224, 224), ValueError, r"expected 3 input channels .* got 4"),
    (torch.randint(0, 255, (1, 3, 224, 224)), TypeError, r"floating-point image batch .* got torch.int64"),
    (torch.randn(1, 3, 224, 224, dtype=torch.float64), TypeError, r"expected torch.float32 input .* got torch.float64"),
    ([1, 2, 3], TypeError, r"got list"),
])
def test_bad_input_raises_clearly(dan, bad, error, expected, monkeypatch):
    launched = []
    from ferfuse.engine.patterns.dan_heads import FusedDANHeads
    monkeypatch.setattr(FusedDANHeads, "forward", lambda *a: launched.append(1))
    with pytest.raises(error, match=expected):
        with torch.no_grad():
            dan(bad)
    assert not launched  # refused before any fused unit ran


def test_spatial_size_the_network_cannot_take():
    model = models.mhan().eval().optimize(verify=False)
    with pytest.raises(ValueError, match=r"spatial size 224×224 cannot pass through MHAN"):
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
    tiny = ferfuse.optimize(randomize_batchnorm(UpstreamDAN(num_head=1)).eval(), verify=False)
    with pytest.raises(ValueError, match=r"spatial size 0×5 cannot pass"):
        with torch.no_grad():
            tiny(torch.randn(1, 3, 0, 5))


def test_input_on_another_device_than_the_weights(dan):
    if not torch.cuda.is_available():
        meta_input = torch.empty(1, 3, 224, 224, device="meta")
        with pytest.raises(ValueError, match=r"weights are on cpu, the input is on meta"):
            dan(meta_input)
    else:
        with pytest.raises(ValueError, match=r"weights are on cpu, the input is on cuda"):
            dan(torch.randn(1, 3, 224, 224, device="cuda"))


def test_expectations_come_from_the_model_structure():
    class Gray(nn.Module):  # a DAN whose trunk takes one channel
        def __init__(self):
            super().__init__()
            self.inner = UpstreamDAN(num_head=1)
            self.inner.features[0] = nn.Conv2d(1, 64, 7, 2, 3, bias=False)

        def forward(self, x):
            return self.inner(x)

    model = ferfuse.optimize(Gray().eval(), verify=False)
    with pytest.raises(ValueError, match=r"expected 1 input channels"):
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_propagate_as_in_the_reference(dan, value, gen):
    import copy
    ref = copy.deepcopy(dan)
    ferfuse.revert(ref)
    x = torch.randn(3, 3, 224, 224, generator=gen)
    x[1, 2, 50, 60] = value
    with torch.no_grad():
        got, expected = dan(x)[0], ref(x)[0]
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-4)


def test_four_threads_get_the_serial_answers(gen):
    model = ferfuse.optimize(randomize_batchnorm(UpstreamDAN(num_head=4), seed=8).eval(), verify=False)
    inputs = [torch.randn(2, 3, 96, 96, generator=gen) for _ in range(8)]
    with torch.no_grad():
        serial = [model(x)[0] for x in inputs]
    model.load_state_dict(model.state_dict())  # new versions: every cache is rebuilt under the threads
    results, errors = {}, []

    def worker(i):
        try:
            with torch.no_grad():
                for j in range(i, len(inputs), 4):
                    results[j] = model(inputs[j])[0]
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(results[j], serial[j]) for j in range(len(inputs)))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_repeated_calls_do_not_grow_memory(gen):
    model = ferfuse.optimize(randomize_batchnorm(UpstreamDAN(num_head=2), seed=9).eval(), verify=False)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        for _ in range(50):  # warm-up: caches, packing, allocator pools
            model(x)
        before = _rss_bytes()
        for _ in range(1000):
            model(x)
        grown = _rss_bytes() - before
    # noise: allocator pools move by a few MB; a leak of one 64×64 activation per call would be >100 MB
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 1000 calls"


def test_a_float64_model_is_refused_clearly():
    model = randomize_batchnorm(UpstreamDAN(num_head=1)).eval().double()
    with pytest.raises(TypeError, match=r"takes a float32 model .* weights are torch.float64: call model.float\(\)"):
        ferfuse.optimize(model)
    assert not ferfuse.engine.is_optimized(model)


def test_a_model_moved_after_optimize_says_so(gen):
    model = ferfuse.optimize(randomize_batchnorm(UpstreamDAN(num_head=1)).eval(), verify=False)
    model.double()
    with pytest.raises(RuntimeError, match=r"moved from cpu torch.float32 to cpu torch.float64 .* optimize\(\) again"):
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    model.float()
    ferfuse.optimize(model, verify=False)  # re-optimising is the remedy
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, generator=gen))[0].shape == (1, 7)


def _tensors(out) -> list[torch.Tensor]:
    """A model's output as a flat list (MHAN returns logits, features and a list of head maps)."""
    return [t for o in out for t in _tensors(o)] if isinstance(out, (tuple, list)) else [out]


def _outputs(model, x) -> list[torch.Tensor]:
    with torch.no_grad():
        return _tensors(model(x))


def _first_output_fp32_and_float64(original, x) -> tuple[torch.Tensor, torch.Tensor]:
    """`original`'s first output on x, and that of a float64 copy of it: a fused model's budget."""
    return _outputs(original, x)[0], _outputs(copy.deepcopy(original).double(), x.double())[0]


def test_an_empty_batch_answers_as_the_original(gen):
    """A frame without faces makes a batch of 0: before, the C kernels divided by its size (MHAN
    killed the process with SIGFPE, HAFEM raised ZeroDivisionError)."""
    stages = efficientnet_stages(2)
    for original, size in [(stages, 64), (models.mhan().eval(), 112)]:
        optimised = ferfuse.optimize(copy.deepcopy(original), example_inputs=(torch.randn(2, 3, size, size, generator=gen),))
        assert ferfuse.engine.report(optimised).fused
        empty = torch.randn(0, 3, size, size)
        expected, got = _outputs(original, empty), _outputs(optimised, empty)
        assert [t.shape for t in got] == [t.shape for t in expected] and all(t.numel() == 0 for t in got)
    with torch.no_grad():  # a chained stage called on its own, past the model's guard
        chained = ferfuse.optimize(copy.deepcopy(stages), example_inputs=(torch.randn(2, 3, 64, 64, generator=gen),))
        assert chained[2](torch.randn(0, 16, 32, 32)).shape == (0, 24, 16, 16)
        from ferfuse.engine.pointwise import PointwiseConv
        assert PointwiseConv(torch.randn(16, 8), None).run(torch.randn(0, 8, 5, 5)).shape == (0, 16, 5, 5)
    # where the original forward cannot take an empty batch (DAN's reshape), the same error
    dan = randomize_batchnorm(UpstreamDAN(num_head=2), seed=3).eval()
    with pytest.raises(RuntimeError) as eager:
        _outputs(dan, torch.randn(0, 3, 112, 112))
    ferfuse.optimize(dan, example_inputs=(torch.randn(2, 3, 112, 112, generator=gen),))
    with pytest.raises(RuntimeError) as fused:
        _outputs(dan, torch.randn(0, 3, 112, 112))
    assert str(fused.value) == str(eager.value)


def test_an_optimised_model_saves_and_loads_whole(gen):
    """torch.save(model) of an optimised model: before, pickling failed on the report's lambdas
    and the loaded forwards could not be bound again. What is saved is the weights and the fused
    structure; packed weights, plans and timed choices are caches the loaded copy makes again on
    its own CPU."""
    for original, size in [(efficientnet_stages(2), 64), (randomize_batchnorm(UpstreamDAN(num_head=2), seed=4).eval(), 112)]:
        reference = copy.deepcopy(original).double()
        optimised = ferfuse.optimize(copy.deepcopy(original), example_inputs=(torch.randn(2, 3, size, size, generator=gen),))
        x = torch.randn(3, 3, size, size, generator=gen)
        _outputs(optimised, x)  # packs, plans and timings at this shape
        buffer = io.BytesIO()
        torch.save(optimised, buffer)
        weights = sum(t.numel() * t.element_size() for t in original.state_dict().values())
        assert buffer.tell() < 1.02 * weights + 2**20, f"{buffer.tell()} bytes saved for {weights} of weights"
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        rep = ferfuse.engine.report(loaded)
        assert ferfuse.engine.is_optimized(loaded) and rep.fused == ferfuse.engine.report(optimised).fused
        assert not rep.executor_by_shape  # timed again on this machine's first call
        for got, fp32, expected in zip(_outputs(loaded, x), _outputs(original, x), _outputs(reference, x.double())):
            assert_close(got, expected, fp32_budget(fp32, expected), f"{type(original).__name__} loaded")
        assert executors.shape_key(x.shape) in rep.executor_by_shape
        assert loaded.state_dict().keys() == original.state_dict().keys()


def test_calls_after_one_under_inference_mode(gen):
    """Folded weights made on a call under torch.inference_mode were inference tensors, and a later
    call with grad enabled (a script without no_grad: MHAN's heads then run their autograd form on
    them) raised "Inference tensors cannot be saved for backward"."""
    for original, size in [(models.mhan().eval(), 112), (randomize_batchnorm(UpstreamDAN(num_head=2), seed=6).eval(), 112)]:
        reference = copy.deepcopy(original).double()
        model = ferfuse.optimize(copy.deepcopy(original), example_inputs=(torch.randn(2, 3, size, size, generator=gen),))
        model.load_state_dict(model.state_dict())  # new versions: the next call folds again
        x = torch.randn(2, 3, size, size, generator=gen)
        expected, fp32 = _outputs(reference, x.double())[0], _outputs(original, x)[0]
        with torch.inference_mode():
            got = [model(x)[0]]
        got.append(_outputs(model, x)[0])
        got.append(model(x)[0].detach())  # grad enabled
        for mode, out in zip(("inference_mode", "no_grad", "grad enabled"), got):
            assert_close(out, expected, fp32_budget(fp32, expected), f"{type(original).__name__} under {mode}")


def test_a_gradient_through_the_input_is_the_original_one(gen, monkeypatch):
    """A saliency map asks autograd for d logits / d input: the guard gives such an input the whole
    original forward. Before, the folded convolutions (no backward) ran on it and the gradient was
    lost without a word (input.grad None after backward). A grad-enabled call on an input that
    needs no gradient (a script without no_grad) keeps the fused path."""
    from ferfuse.engine.patterns.conv_bn import FoldedConvBN
    for original, size in [(efficientnet_stages(2), 64), (randomize_batchnorm(UpstreamDAN(num_head=2), seed=2).eval(), 112)]:
        model = ferfuse.optimize(copy.deepcopy(original), example_inputs=(torch.randn(2, 3, size, size, generator=gen),))
        x = torch.randn(2, 3, size, size, generator=gen)
        grads = []
        for m in (original, model):
            leaf = x.clone().requires_grad_()
            _tensors(m(leaf))[0].square().sum().backward()
            grads.append(leaf.grad)
        assert grads[1] is not None and torch.equal(grads[0], grads[1])
        runs = []
        monkeypatch.setattr(FoldedConvBN, "forward", lambda self, t, f=FoldedConvBN.forward: runs.append(1) or f(self, t))
        model(x)  # grad enabled, x needs none
        monkeypatch.undo()
        assert runs, "a grad-enabled call on an input that needs no gradient left the fused path"


def _hooked_outputs(model, name, x) -> list[torch.Tensor]:
    """What a forward hook on `model`'s submodule `name` sees over one call of `model(x)`."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    try:
        _outputs(model, x)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("name", [
    "features.1",          # a BatchNorm folded into the stem conv (conv_bn): the fused path has no such output
    "features.0",          # that stem conv: fused, it returns conv+BN+ReLU
    "features.5.0.conv2",  # a conv inside a fused ResNet block, which the fused path never calls
])
def test_a_hook_inside_a_fused_unit_sees_the_original_call(dan, name, gen):
    """A feature extractor's (or a pruned conv's) hook on a module the fused path skips or changes:
    while it is registered, that unit runs its original modules, so the hook fires once a call
    with the original's values; removed, the unit runs fused again. Before, such hooks never fired
    (or saw the folded output) and nothing said so."""
    x = torch.randn(2, 3, 224, 224, generator=gen)
    original = ferfuse.revert(copy.deepcopy(dan))
    entry = next(m for n in (name, name.rsplit(".", 1)[0]) if "_ferfuse_unit" in (m := dan.get_submodule(n)).__dict__)
    unit = entry.__dict__["_ferfuse_unit"]  # on the module itself, or on the block holding it
    fused_before = _outputs(dan, x)
    seen = _hooked_outputs(dan, name, x)
    plain, exact = _hooked_outputs(original, name, x), _hooked_outputs(copy.deepcopy(original).double(), name, x.double())
    assert len(seen) == len(plain) == 1 and seen[0].shape == plain[0].shape
    assert_close(seen[0], exact[0], fp32_budget(plain[0], exact[0]), f"what the hook on {name} saw")
    assert unit.active(entry), "the hook is gone: the unit runs fused again"
    for a, b in zip(_outputs(dan, x), fused_before):
        assert torch.equal(a, b)


def test_a_hook_inside_a_chained_mbconv_block(gen):
    """A hook on the depthwise conv inside one of a chain of MBConv blocks: that block runs its
    original modules (the hook fires once, with the original's output), the rest stay fused."""
    original = efficientnet_stages(2)
    model = ferfuse.optimize(copy.deepcopy(original))
    x = torch.randn(1, 3, 96, 96, generator=gen)
    _outputs(model, x)  # the first call at this shape plans the chain
    name = "2.0.block.1.0"
    seen = _hooked_outputs(model, name, x)
    plain, exact = _hooked_outputs(original, name, x), _hooked_outputs(copy.deepcopy(original).double(), name, x.double())
    assert len(seen) == 1 and seen[0].shape == plain[0].shape
    assert_close(seen[0], exact[0], fp32_budget(plain[0], exact[0]), "what the hook saw")
    out = _outputs(model, x)[0]
    ref, ref64 = _first_output_fp32_and_float64(original, x)
    assert_close(out, ref64, fp32_budget(ref, ref64))


def test_a_pruned_conv_follows_its_mask(gen):
    """torch.nn.utils.prune recomputes a conv's weight from weight_orig × weight_mask in a forward
    pre-hook: the optimised model follows a changed mask as the original does, and its report
    says that unit runs its original modules."""
    import torch.nn.utils.prune as prune

    model = randomize_batchnorm(UpstreamDAN(num_head=1), seed=3).eval()
    prune.l1_unstructured(model.features[0], "weight", amount=0.5)
    x = torch.randn(2, 3, 224, 224, generator=gen)
    # the pruned weight as prune left it, computed with autograd: torch cannot deep-copy the model
    with pytest.raises(RuntimeError, match=r"cannot copy this one.*no_grad\(\).*prune.remove"):
        ferfuse.optimize(model)
    assert not ferfuse.engine.is_optimized(model)
    _outputs(model, x)  # the pre-hook's weight, now computed without autograd: the model copies
    ferfuse.optimize(model)
    assert "forward hooks on modules inside conv_bn features.0" in str(ferfuse.report(model))
    with torch.no_grad():
        model.features[0].weight_mask[:, :, :2].zero_()  # prune two rows of every 7×7 kernel more
    out = _outputs(model, x)[0]
    original = ferfuse.revert(copy.deepcopy(model))
    ref, ref64 = _first_output_fp32_and_float64(original, x)
    assert_close(out, ref64, fp32_budget(ref, ref64))


def test_hooks_see_one_call_on_a_shapes_first_call(dan, gen):
    """A shape's first call times the executors by running the forward once per executor; those
    runs are not the caller's, so a hook inside the model (here inside fused units, which then run
    their original modules) sees that call once."""
    x = torch.randn(3, 3, 224, 224, generator=gen)
    assert executors.shape_key(x.shape) not in ferfuse.report(dan).executor_by_shape  # its first call: timed
    calls = []
    handles = [dan.get_submodule(name).register_forward_hook(lambda m, args, out, name=name: calls.append(name))
               for name in ("features.1", "features.5.0.conv2")]
    try:
        _outputs(dan, x)
    finally:
        for h in handles:
            h.remove()
    assert executors.shape_key(x.shape) in ferfuse.report(dan).executor_by_shape
    assert calls == ["features.1", "features.5.0.conv2"]


def test_a_hook_for_every_module_sees_every_module_call(dan, gen):
    """`register_module_forward_hook` (a profiler's or a debugger's, for every module): every fused
    unit runs its original modules while it is registered, so the hook sees the calls the original
    model makes, each once."""
    x = torch.randn(2, 3, 224, 224, generator=gen)
    original = ferfuse.revert(copy.deepcopy(dan))
    _outputs(dan, x)  # not this shape's first call below: its executor timing is done

    def modules_called(model) -> list[str]:
        names = {id(m): n for n, m in model.named_modules()}
        called = []
        handle = nn.modules.module.register_module_forward_hook(
            lambda m, args, out: called.append(names[id(m)]) if id(m) in names else None)
        try:
            _outputs(model, x)
        finally:
            handle.remove()
        return called

    assert modules_called(dan) == modules_called(original)
    assert dan.__dict__["_ferfuse_unit"].active(dan)  # the hook gone: fused again


def test_a_module_replaced_after_optimize_is_run(gen):
    """A user who re-heads an optimised model for other classes (`model.fc = nn.Linear(...)`) gets
    the new classifier's logits: the heads unit, whose folded weights are the old one's, runs its
    original modules from then on, warns once and says so in the report. Putting the old module
    back fuses again. Before, the fused path ran the replaced weights silently (DAN's logits off
    by 5e4 on randomised BatchNorm)."""
    model = ferfuse.optimize(randomize_batchnorm(UpstreamDAN(num_head=2), seed=11).eval())
    x = torch.randn(2, 3, 112, 112, generator=gen)
    old_fc = model.fc
    model.fc = nn.Linear(old_fc.in_features, old_fc.out_features)  # new weights (DAN's BatchNorm1d follows it)
    reference = copy.deepcopy(model)
    ferfuse.revert(reference)
    with pytest.warns(UserWarning, match=r"fc was replaced after optimize\(\): dan_heads .* optimize\(\) the model again"):
        got = _outputs(model, x)[0]
    ref, ref64 = _first_output_fp32_and_float64(reference, x)
    assert_close(got, ref64, fp32_budget(ref, ref64), "logits after the classifier was replaced")
    assert "note: fc was replaced after optimize(): dan_heads" in str(ferfuse.engine.report(model))
    assert ferfuse.engine.attention_maps(model, x) is None  # no active unit computes them now
    copied = copy.deepcopy(model)  # a copy sees its own replaced module
    assert_close(_outputs(copied, x)[0], ref64, fp32_budget(ref, ref64), "the copy's logits")
    model.fc = old_fc  # back in place: fused again, silently
    assert ferfuse.engine.attention_maps(model, x) is not None  # the heads' fused path computes them
    assert "was replaced" not in str(ferfuse.engine.report(model))


def test_a_conv_replaced_inside_a_chained_mbconv_block(gen):
    """A conv replaced deep inside one MBConv block of a chain (`block[1][0] = conv`): that block
    leaves the chain and runs its original modules, with the new conv; the others stay fused."""
    original = efficientnet_stages(2)
    model = ferfuse.optimize(copy.deepcopy(original))
    x = torch.randn(1, 3, 96, 96, generator=gen)
    _outputs(model, x)  # plans the chain
    dw = model[2][0].block[1][0]
    new = nn.Conv2d(dw.in_channels, dw.out_channels, dw.kernel_size, dw.stride, dw.padding, groups=dw.groups,
                    bias=False)
    with torch.no_grad():
        new.weight.copy_(torch.randn(new.weight.shape, generator=gen))
    model[2][0].block[1][0] = new
    original[2][0].block[1][0] = copy.deepcopy(new)
    with pytest.warns(UserWarning, match=r"2\.0\.block\.1\.0 was replaced after optimize\(\)"):
        out = _outputs(model, x)[0]
    ref, ref64 = _first_output_fp32_and_float64(original, x)
    assert_close(out, ref64, fp32_budget(ref, ref64))
    tally = ferfuse.engine.report(model).form_tally()
    assert tally["MBConv blocks"], "the other blocks still run as C calls"


def test_a_weight_parametrized_after_optimize_is_followed(gen):
    """torch.nn.utils.parametrizations.weight_norm on a fused classifier after optimize(): the
    weight now comes from tensors folding never saw, so the unit runs its original modules, and a
    later in-place change to them shows in the logits (before, it went unseen: DAN's logits off by
    twice their size)."""
    from torch.nn.utils import parametrizations

    model = ferfuse.optimize(randomize_batchnorm(UpstreamDAN(num_head=2), seed=11).eval())
    x = torch.randn(2, 3, 112, 112, generator=gen)
    parametrizations.weight_norm(model.fc)
    with pytest.warns(UserWarning, match=r"fc gained or lost a submodule after optimize\(\)"):
        _outputs(model, x)
    with torch.no_grad():
        model.fc.parametrizations.weight.original1.mul_(-1.5)
    reference = copy.deepcopy(model)
    ferfuse.revert(reference)
    got = _outputs(model, x)[0]
    ref, ref64 = _first_output_fp32_and_float64(reference, x)
    assert_close(got, ref64, fp32_budget(ref, ref64), "logits after the parametrized weight changed")
    assert "note: fc gained or lost a submodule after optimize()" in str(ferfuse.engine.report(model))


def test_a_call_under_autocast_runs_the_original_forward(gen, monkeypatch):
    """Under torch.autocast every op takes the precision autocast gives it, while the fused units
    compute at optimize()'s. Before, an optimised HAFEM raised under CPU autocast (a bfloat16
    residual met a float32 oneDNN convolution) and DAN returned a mixture of both precisions. The
    guard runs the original forward under autocast, as the model would run without ferfuse, warns
    once and notes it in the report; outside autocast the model runs fused again. optimize() itself
    called under autocast verifies as outside it (before, its baseline ran in bfloat16: budgets of
    ~3e-2 on DAN's logits)."""
    from ferfuse.engine.patterns.conv_bn import FoldedConvBN
    for original, size in [(efficientnet_stages(2), 64), (randomize_batchnorm(UpstreamDAN(num_head=2), seed=2).eval(), 112)]:
        example = torch.randn(2, 3, size, size, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
            warnings.simplefilter("error")  # verification ran outside autocast: the guard never saw it
            model = ferfuse.optimize(copy.deepcopy(original), example_inputs=(example,))
        outside = ferfuse.optimize(copy.deepcopy(original), example_inputs=(example,))
        assert ferfuse.engine.report(model).logits_baseline == ferfuse.engine.report(outside).logits_baseline
        x = torch.randn(2, 3, size, size, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = _outputs(original, x)
            with pytest.warns(UserWarning, match="torch.autocast is enabled"):
                got = _outputs(model, x)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # once per model
                again = _outputs(model, x)
        for out in (got, again):
            assert [t.dtype for t in out] == [t.dtype for t in expected]
            assert all(torch.equal(a, b) for a, b in zip(out, expected)), type(original).__name__
        assert "calls under torch.autocast ran the original forward" in str(ferfuse.engine.report(model))
        runs = []
        monkeypatch.setattr(FoldedConvBN, "forward", lambda self, t, f=FoldedConvBN.forward: runs.append(1) or f(self, t))
        _outputs(model, x)
        monkeypatch.undo()
        assert runs, "outside autocast the model left the fused path"
