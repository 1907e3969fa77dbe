"""fz29: factorize_model on small synthetic models (an MLP, a CNN, a shared layer): the report
against numel, FlopCounterMode and a float64 recomputation of each layer's error made here from
the original model's own activations; skips, errors, modes and frozen weights."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from lazymat.factorize import factorize_linear, factorize_model

D64 = torch.float64


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, 48))


def _cnn() -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(24, 32, 3, padding="same", padding_mode="reflect"),
                               torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 1), torch.nn.Flatten(),
                               torch.nn.Linear(32 * 6 * 6, 10))


def _inputs(shape, seed):
    """Samples (seed) of one distribution of correlated features/channels (the same mix)."""
    mix = torch.randn(shape[1], shape[1], generator=torch.Generator().manual_seed(1234))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return torch.einsum("nc...,cd->nd...", x, mix) / shape[1] ** 0.5


def _activations(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each Linear/Conv2d's input in the model's forward on x (own hooks, not lazymat's)."""
    seen = {}
    handles = [m.register_forward_pre_hook(lambda m, a, name=name: seen.setdefault(name, a[0].detach()))
               for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def _nmse64(original: torch.nn.Module, new: torch.nn.Module, x: torch.Tensor) -> float:
    """mean((Y - Y_hat)^2) / var(Y) of the two modules on x, all in float64."""
    with torch.no_grad():
        y = copy.deepcopy(original).to(D64)(x.to(D64))
        y_hat = copy.deepcopy(new).to(D64)(x.to(D64))
    return float(((y - y_hat) ** 2).mean() / y.var())


def _flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("make, shape", [(_mlp, (400, 32)), (_cnn, (24, 3, 6, 6))])
def test_the_report_matches_numel_flop_counter_and_float64_errors(make, shape):
    model, X = make(), _inputs(shape, 0)
    report = factorize_model(model, X, rank=0.25, inplace=False)
    new = report.model
    assert new is not model and all(isinstance(m, torch.nn.Sequential) for m in (model, new))
    # parameters: the rows and the whole models, counted by numel
    assert report.model_params_before == _numel(model)
    assert report.model_params_after == _numel(new) < _numel(model)
    for row in report.layers:
        (name,) = row.names
        assert row.params_before == _numel(model.get_submodule(name))
        assert row.params_after == _numel(new.get_submodule(name))
    # multiply-adds on X: ReLU and Flatten do none, so FlopCounterMode counts only these layers
    assert _flops(model, X) == 2 * report.macs_before
    assert _flops(new, X) == 2 * report.macs_after < _flops(model, X)
    # each layer's nmse, recomputed in float64 on its inputs in the original model
    seen = _activations(model, X)
    assert report.factorized, str(report)
    for row in report.factorized:
        (name,) = row.names
        want = _nmse64(model.get_submodule(name), new.get_submodule(name), seen[name])
        assert row.nmse == pytest.approx(want, rel=1e-3, abs=1e-6)
        assert 0 < row.nmse < 1
    text = str(report)
    assert "total" in text and f"{report.params_after:,}" in text


def test_a_layer_split_alone_generalises_to_held_out_inputs_as_reported():
    """The model's outputs are the split layer's, so its error on new inputs from the same
    distribution is near the nmse reported on X (4000 samples for 64 x 48 weights)."""
    model = _mlp()
    report = factorize_model(model, _inputs((4000, 32), 0), rank=8, names=r"^4$", inplace=False)
    assert [row.names for row in report.factorized] == [("4",)]
    held_out = _inputs((4000, 32), 1)
    assert _nmse64(model, report.model, held_out) == pytest.approx(report.factorized[0].nmse, rel=0.1)
    # and the whole model, every layer split, stays close on held-out inputs
    everything = factorize_model(model, _inputs((4000, 32), 0), rank=0.4, inplace=False)
    assert len(everything.factorized) == 3
    assert _nmse64(model, everything.model, held_out) < 0.25  # (0.117; layers 0.15, 0.043, 0.032)


class Shared(torch.nn.Module):
    """One Linear reached as .a and .b (called twice), and a head tied to .a's weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a = torch.nn.Linear(40, 40)
        self.b = self.a
        self.mid = torch.nn.Linear(40, 40)
        self.tied = torch.nn.Linear(40, 40, bias=False)
        self.tied.weight = self.mid.weight

    def forward(self, x):
        return self.tied(torch.relu(self.mid(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_a_shared_layer_is_split_once_and_stays_shared_and_tied_weights_are_kept():
    model, X = Shared(), _inputs((300, 40), 0)
    report = factorize_model(model, X, rank=8, inplace=False)
    rows = {row.names: row for row in report.layers}
    shared = rows[("a", "b")]
    assert shared.factorized and shared.calls_rows == 600  # both calls' inputs
    new = report.model
    assert new.a is new.b and isinstance(new.a, torch.nn.Sequential)
    assert not rows[("mid",)].factorized and "also tied.weight" in rows[("mid",)].note
    assert not rows[("tied",)].factorized and "also mid.weight" in rows[("tied",)].note
    assert report.model_params_after == _numel(new)  # (the shared layer counted once)
    assert _flops(new, X) == _flops(model, X) - 2 * (shared.macs_before - shared.macs_after)
    # the shared layer's nmse is over the inputs of both calls, recomputed here in float64
    first = X
    with torch.no_grad():
        second = torch.relu(model.a(X))
    inputs = torch.cat([first, second])
    assert shared.nmse == pytest.approx(_nmse64(model.a, new.a, inputs), rel=1e-3)


def test_skips_say_why_and_filters_apply():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 64), torch.nn.Linear(64, 64))
    report = factorize_model(model, torch.randn(50, 8), rank=5, min_features=8, inplace=False)
    rows = {row.names[0]: row for row in report.layers}
    assert "largest that does is 3" in rows["0"].note and not rows["0"].factorized
    assert rows["1"].factorized and rows["2"].factorized
    report = factorize_model(model, torch.randn(50, 8), rank=5, min_features=16, inplace=False)
    rows = {row.names[0]: row for row in report.layers}
    assert "min_features=16" in rows["1"].note and rows["2"].factorized
    report = factorize_model(model, torch.randn(50, 8), rank=5, names=lambda n: n == "2", inplace=False)
    assert [r.names for r in report.factorized] == [("2",)]
    assert report.layers[0].note == "excluded by names"


def test_layers_the_model_does_not_call_or_cannot_split_are_skipped():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.strided = torch.nn.Conv2d(8, 16, 3, stride=2)
            self.grouped = torch.nn.Conv2d(16, 16, 3, groups=4)
            self.used = torch.nn.Conv2d(16, 16, 3)
            self.unused = torch.nn.Linear(16, 16)

        def forward(self, x):
            return self.used(self.grouped(self.strided(x)))

    model = Model()
    report = factorize_model(model, torch.randn(4, 8, 16, 16), rank=2, inplace=False)
    notes = {row.names[0]: row.note for row in report.layers}
    assert "stride (2, 2)" in notes["strided"] and "groups 4" in notes["grouped"]
    assert notes["unused"] == "not called by the model on X" and notes["used"] == ""
    # skipped layers still count in the multiply-adds on X, as FlopCounterMode does
    assert _flops(model, torch.randn(4, 8, 16, 16)) == 2 * report.macs_before


def test_kinds_and_in_place_and_a_model_that_is_one_layer():
    model, X = _cnn(), _inputs((8, 3, 6, 6), 0)
    report = factorize_model(model, X, rank=4, kinds=torch.nn.Linear, inplace=False)
    assert [row.names for row in report.layers] == [("6",)]
    before = copy.deepcopy(model.state_dict())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    in_place = factorize_model(model, X, rank=4)
    assert in_place.model is model and isinstance(model[0], torch.nn.Sequential)
    layer = torch.nn.Linear(30, 30)
    alone = factorize_model(layer, torch.randn(100, 30), rank=3)
    assert isinstance(alone.model, torch.nn.Sequential) and alone.layers[0].names == ("",)


def test_eval_mode_and_frozen_weights_carry_over():
    model = _mlp().eval()
    model[2].requires_grad_(False)
    report = factorize_model(model, _inputs((200, 32), 0), rank=4, inplace=False)
    assert not any(m.training for m in report.model.modules())
    assert all(not p.requires_grad for p in report.model[2].parameters())
    assert all(p.requires_grad for p in report.model[0].parameters())


def test_the_single_layer_helper_keeps_the_layers_mode():
    """On main the two new layers were in training mode whatever the layer's mode."""
    layer = torch.nn.Linear(16, 16).eval()
    assert not factorize_linear(layer, torch.randn(64, 16), rank=2).training


def test_errors_name_the_shapes_and_the_layer():
    model = _mlp()
    where = r"X \(10, 31\).*layer '0' \(Linear\(32 -> 64\), its input \(10, 31\)\)"
    with pytest.raises(ValueError, match=where):
        factorize_model(model, torch.randn(10, 31))
    with pytest.raises(ValueError, match="no Linear or Conv2d layer of ReLU.*it has none"):
        factorize_model(torch.nn.ReLU(), torch.randn(3, 3))
    with pytest.raises(ValueError, match="no Linear layer of Sequential.*excluded by names"):
        factorize_model(model, torch.randn(10, 32), kinds=(torch.nn.Linear,), names="nothing")
    with pytest.raises(ValueError, match="kinds"):
        factorize_model(model, torch.randn(10, 32), kinds=torch.nn.Conv1d)
    with pytest.raises(ValueError, match="rank"):
        factorize_model(model, torch.randn(10, 32), rank=1.5)
    with pytest.raises(ValueError, match="min_features"):
        factorize_model(model, torch.randn(10, 32), min_features=-1)
    # nothing was changed by the failures
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.ReLU)) for m in model)


def test_a_failing_fit_names_the_layer_and_leaves_the_model_unchanged():
    model = _mlp()
    model[2].bias.data[3] = float("nan")  # the layer's outputs on X hold a NaN
    with pytest.raises(ValueError, match=r"layer '2' \(Linear\(64 -> 64\)\).*inf or NaN"):
        factorize_model(model, torch.randn(100, 32), rank=4)
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.ReLU)) for m in model)


def test_the_forward_runs_in_eval_mode_without_side_effects_and_modes_are_restored():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Dropout(0.5),
                                torch.nn.Linear(32, 32))
    model.train()
    stats = model[1].running_mean.clone()
    X = torch.randn(200, 16)
    report = factorize_model(model, X, rank=4, inplace=False)
    assert torch.equal(report.model[1].running_mean, stats)  # batch norm statistics untouched
    assert all(m.training for m in report.model.modules())   # the train mode is given back
    # the last layer was fitted to its eval-mode inputs (no dropout): recomputed here in float64
    model.eval()
    with torch.no_grad():
        inputs = model[2](model[1](model[0](X)))
    assert report.layers[1].nmse == pytest.approx(_nmse64(model[3], report.model[3], inputs), rel=1e-3)


class TwoInputs(torch.nn.Module):
    """A convolution called on two image sizes, another on unbatched images, and two inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.both_sizes = torch.nn.Conv2d(6, 12, 3, padding=1)
        self.unbatched = torch.nn.Conv2d(6, 12, 3, padding=1)
        self.head = torch.nn.Linear(12, 12)

    def forward(self, images, small):
        a = self.both_sizes(images).mean((-1, -2)) + self.both_sizes(small).mean((-1, -2))
        b = torch.stack([self.unbatched(image).mean((-1, -2)) for image in images])
        return self.head(a + b)


def test_tuple_and_dict_inputs_unbatched_images_and_a_layer_seen_at_two_sizes():
    model = TwoInputs()
    images, small = torch.randn(8, 6, 10, 10), torch.randn(8, 6, 5, 5)
    for X in ((images, small), {"images": images, "small": small}):
        report = factorize_model(model, X, rank=3, inplace=False)
        notes = {row.names[0]: row for row in report.layers}
        assert notes["both_sizes"].note == "called on inputs of different sizes"
        unbatched = notes["unbatched"]
        assert unbatched.factorized and unbatched.calls_rows == 8 * 10 * 10
        # its nmse, recomputed in float64 on the eight images it saw one at a time
        assert unbatched.nmse == pytest.approx(_nmse64(model.unbatched, report.model.unbatched, images),
                                               rel=1e-3)
    assert _flops(lambda x: model(*x), (images, small)) == 2 * report.macs_before


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 24), min_size=2, max_size=5), bias=st.booleans(),
       rank=st.one_of(st.integers(1, 12), st.sampled_from([0.1, 0.25, 0.5, 0.75])), seed=st.integers(0, 99))
def test_any_mlp_report_matches_numel_flop_counter_and_splits_the_saving_layers(widths, bias, rank, seed):
    torch.manual_seed(seed)
    layers = []
    for d, m in zip(widths, widths[1:], strict=False):
        layers += [torch.nn.Linear(d, m, bias=bias), torch.nn.Tanh()]
    model, X = torch.nn.Sequential(*layers), torch.randn(60, widths[0])
    report = factorize_model(model, X, rank=rank, inplace=False)
    assert report.model_params_after == _numel(report.model)
    assert _flops(model, X) == 2 * report.macs_before and _flops(report.model, X) == 2 * report.macs_after
    for row in report.layers:
        layer = model.get_submodule(row.names[0])
        narrow = min(layer.in_features, layer.out_features)
        k = rank if isinstance(rank, int) else max(1, int(rank * narrow + 1e-9))
        # (fewer parameters: with a bias, the same as fewer multiply-adds; without, stricter)
        fewer = k * (layer.in_features + layer.out_features) + layer.out_features < _numel(layer)
        assert row.factorized == fewer, (row, k)
        if row.factorized:
            assert row.rank == k and row.params_after == _numel(report.model.get_submodule(row.names[0]))
            assert 0 <= row.nmse <= 1 + 1e-6  # (no worse than the mean: ALS's first step could give it)
