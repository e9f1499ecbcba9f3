"""The active-set solve of PC phases on ReLU / max-pooling networks (``core.active_set``).

Oracle: the optimality (KKT) conditions of the piecewise-linear PC energy, written here from its
equations, not from the library's layers. At the returned state every hidden activity's
gradient must vanish, with each unit's slope the one its side gives (ReLU: 1 above its kink,
0 below; max-pooling: the window's winner) and, for units the solve reports on their kink
(pre-activation, or the gap between a window's two largest entries, ~0), some slope in [0, 1]
(Clarke's generalised gradient contains 0). The slopes of the kink units are found here by
least squares on the stationarity equations; they must lie in [0, 1] and leave no residual.
The parameter gradients the library returns at that state must be the energy's with those
slopes. The same phases without the active set settle far from stationarity (the test's case
needs it).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pl_energy
from pl_energy.core.losses import as_loss

LAM, TOL, ON_KINK = 1.0, 1e-10, 1e-7


def relu_network(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Linear(6, 10), nn.ReLU()), nn.Sequential(nn.Linear(10, 10), nn.ReLU()),
        nn.Sequential(nn.Linear(10, 10), nn.ReLU()), nn.Linear(10, 4)).double()


def pool_network(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 8)),
        nn.Linear(8, 3)).double()


def clamped_phase(network: nn.Sequential, classes: int, active_set: bool = True, converges: bool | None = None):
    """pc (lam = 1) on a batch of 8: its phase's report and state (a phase that does not
    converge warns: by default, those without the active set)."""
    inputs = torch.randn(8, 6, dtype=torch.float64)
    targets = torch.randint(0, classes, (8,))
    algorithm = pl_energy.build_algorithm("pc", lam=LAM, tol=TOL, steps=500, active_set=active_set,
                                          error_estimate=False)
    converges = active_set if converges is None else converges
    with _nothing() if converges else pytest.warns(pl_energy.NotConvergedWarning):
        contrast = algorithm.phases(network, inputs, targets, as_loss("cross_entropy"), False)
    return contrast.reports[0], contrast.high, targets


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def least_squares_slopes(base: torch.Tensor, columns: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The slopes s minimising ||base + sum_k s_k columns_k|| and the relative residual left."""
    if not columns:
        return base.new_zeros(0), float(base.norm())
    matrix = torch.stack(columns, dim=1)
    slopes = torch.linalg.lstsq(matrix, -base.unsqueeze(1)).solution.squeeze(1)
    return slopes, float((base + matrix @ slopes).norm())


def output_gradient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LAM * d CE_b / d logits_b per sample (the per-sample energy's supervised term)."""
    return LAM * (logits.softmax(-1) - F.one_hot(targets, logits.shape[-1]).to(logits.dtype))


@pytest.mark.parametrize("seed", [0, 2])
def test_relu_phase_satisfies_the_kkt_conditions_with_slopes_in_the_unit_interval(seed):
    network = relu_network(seed)
    report, phase, targets = clamped_phase(network, 4)
    assert report.converged and report.residual <= TOL
    assert report.units_on_kink >= 1 and report.pieces_changed >= 2 * report.units_on_kink
    x = [a.detach() for a in phase.state.activities]
    linears = [network[0][0], network[1][0], network[2][0], network[3]]
    pre = [linears[l](x[l]).detach() for l in range(3)]  # a_1..a_3
    errors = [x[l + 1] - pre[l].clamp_min(0) for l in range(3)]  # e_1..e_3
    top = errors[2] + output_gradient(linears[3](x[3]).detach(), targets) @ linears[3].weight.detach()
    scale = max(float(e.abs().max()) for e in errors)
    assert float(top.abs().max()) <= 1e-8 * scale  # the output layer is smooth
    on_kink_total, slopes_found = 0, {}
    for b in range(x[0].shape[0]):
        # dE/dx_1 = e_1 - W_2^T (d_2 * e_2), dE/dx_2 = e_2 - W_3^T (d_3 * e_3), d = ReLU slopes
        base, columns, where = [], [], []
        for layer in (1, 2):  # the gradient of x_layer, through the slopes of a_{layer+1}
            a, e_above, weight = pre[layer][b], errors[layer][b], linears[layer].weight
            kink = a.abs() <= ON_KINK * scale
            slope = (a > 0).to(a.dtype).masked_fill(kink, 0.0)
            rows = [torch.zeros(10, dtype=a.dtype), torch.zeros(10, dtype=a.dtype)]
            rows[layer - 1] = errors[layer - 1][b] - weight.T @ (slope * e_above)
            base.append(torch.cat(rows))
            for unit in kink.nonzero().flatten().tolist():
                column = [torch.zeros(10, dtype=a.dtype), torch.zeros(10, dtype=a.dtype)]
                column[layer - 1] = -weight[unit] * e_above[unit]
                columns.append(torch.cat(column))
                where.append((layer, unit))
        slopes, residual = least_squares_slopes(torch.stack(base).sum(0), columns)
        assert residual <= 1e-7 * scale
        assert bool(((slopes >= -1e-6) & (slopes <= 1 + 1e-6)).all()), slopes
        on_kink_total += len(where)
        slopes_found.update({(b, *key): float(s) for key, s in zip(where, slopes)})
    assert on_kink_total == report.units_on_kink
    # the state's parameter gradients use the same slopes: dE/dW_l = -(d_l * e_l) x_{l-1}^T / B
    gradients = phase.energy.parameter_gradients(phase.state)
    for layer in (1, 2):
        slope = (pre[layer] > 0).to(torch.float64)
        for (b, at, unit), s in slopes_found.items():
            if at == layer:
                slope[b, unit] = s
        expected = -(slope * errors[layer]).T @ x[layer] / x[0].shape[0]
        torch.testing.assert_close(gradients[layer][0], expected, rtol=1e-6, atol=1e-9 * scale)


def test_relu_phase_without_the_active_set_settles_short_of_stationarity():
    report, _, _ = clamped_phase(relu_network(0), 4, active_set=False)
    assert not report.converged and report.settled and report.residual > 1e-3
    assert report.pieces_changed is None and report.units_on_kink is None


@pytest.mark.parametrize("seed", [0, 7])
def test_max_pool_phase_satisfies_the_kkt_conditions_with_split_winners(seed):
    network = pool_network(seed)
    report, phase, targets = clamped_phase(network, 3)
    assert report.converged and report.units_on_kink >= 1
    x = [a.detach() for a in phase.state.activities]
    first, second, third = network[0], network[1][3], network[2]
    windows = x[1].view(-1, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4, 4)  # (B, window, entry)
    pooled = windows.amax(-1)
    e1 = x[1] - first(x[0]).detach()
    e2 = x[2] - second(pooled).detach()
    top = e2 + output_gradient(third(x[2]).detach(), targets) @ third.weight.detach()
    scale = float(torch.cat([e1.abs().flatten(), e2.abs().flatten()]).max())
    assert float(top.abs().max()) <= 1e-8 * scale
    upstream = e2 @ second.weight.detach()  # dE/d pooled = -upstream; it flows to each window's winner
    ties = 0
    for b in range(x[0].shape[0]):
        ordered = windows[b].sort(-1, descending=True)
        base = torch.zeros(4, 4, dtype=torch.float64)  # (window, entry) of dE/dx_1
        base += e1[b].view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)
        columns = []
        for w in range(4):
            top_entry, runner_up = ordered.indices[w, 0], ordered.indices[w, 1]
            if ordered.values[w, 0] - ordered.values[w, 1] <= ON_KINK * scale:
                # s to the first, 1 - s to the second: base gets the second's share, s moves it
                base[w, runner_up] -= upstream[b, w]
                column = torch.zeros(4, 4, dtype=torch.float64)
                column[w, top_entry] -= upstream[b, w]
                column[w, runner_up] += upstream[b, w]
                columns.append(column.flatten())
            else:
                base[w, top_entry] -= upstream[b, w]
        slopes, residual = least_squares_slopes(base.flatten(), columns)
        assert residual <= 1e-7 * scale
        assert bool(((slopes >= -1e-6) & (slopes <= 1 + 1e-6)).all()), slopes
        ties += len(columns)
    assert ties == report.units_on_kink


def test_max_pool_phase_without_the_active_set_settles():
    report, _, _ = clamped_phase(pool_network(0), 3, active_set=False)
    assert not report.converged and report.settled


def test_phases_that_converge_never_start_the_active_set():
    network = relu_network(0)
    inputs, targets = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    contrast = pl_energy.build_algorithm("pc_nudge", tol=1e-10).phases(
        network, inputs, targets, as_loss("cross_entropy"), False)
    assert contrast.reports[0].converged and contrast.reports[0].pieces_changed is None


def test_a_solve_out_of_rounds_hands_the_phase_back_to_descent(monkeypatch):
    """With one round the solve fails (its pieces still change); descent then goes on from where
    it stopped and settles, as without the active set, and the report counts the side changes."""
    from pl_energy.core import active_set

    monkeypatch.setattr(active_set, "MAX_ROUNDS", 1)
    torch.manual_seed(1)
    failed, _, _ = clamped_phase(relu_network(0), 4, active_set=True, converges=False)
    assert not failed.converged and failed.settled and failed.residual > 1e-3
    assert failed.pieces_changed >= 1 and failed.units_on_kink is None
