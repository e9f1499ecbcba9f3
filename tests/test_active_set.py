"""The active-set solve of PC phases on piecewise-linear networks (``core.active_set``): ReLU,
leaky ReLU, clip and hardsigmoid units, max-pooling.

Oracle: the optimality (KKT) conditions of the piecewise-linear PC energy, written here from its
equations, not from the library's layers. At the returned state every hidden activity's
gradient must vanish, with each unit's slope the one its side gives (ReLU: 1 above its kink,
0 below; max-pooling: the window's winner) and, for units the solve reports on their kink
(pre-activation at a kink, or the gap between a window's two largest entries, ~0), some slope
between its two sides' (Clarke's generalised gradient contains 0). The slopes of the kink units are found here by
least squares on the stationarity equations; they must lie in [0, 1] and leave no residual.
The parameter gradients the library returns at that state must be the energy's with those
slopes. The same phases without the active set settle far from stationarity (the test's case
needs it).
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pl_energy
from pl_energy.core.active_set import CYCLE, Pieces, _KinkNewton, has_pieces
from pl_energy.core.activations import Clip
from pl_energy.core.linearization import AutogradLinearization, DenseLinearization, LayerLinearizer
from pl_energy.core.losses import as_loss

LAM, TOL, ON_KINK = 1.0, 1e-9, 1e-7

#: Each unit written here: its kinks, and the slope of each side (below the first kink, between,
#: above the last); ``make`` builds PyTorch's module, ``scale`` multiplies the initial weights so
#: that the pre-activations reach the kinks.
UNITS = {
    "relu": dict(make=nn.ReLU, kinks=(0.0,), slopes=(0.0, 1.0), value=lambda a: a.clamp_min(0), scale=1.0),
    "leaky_relu": dict(make=lambda: nn.LeakyReLU(0.1), kinks=(0.0,), slopes=(0.1, 1.0),
                       value=lambda a: torch.where(a > 0, a, 0.1 * a), scale=1.0),
    "clip": dict(make=Clip, kinks=(0.0, 1.0), slopes=(0.0, 1.0, 0.0), value=lambda a: a.clamp(0, 1), scale=2.0),
    "hardsigmoid": dict(make=nn.Hardsigmoid, kinks=(-3.0, 3.0), slopes=(0.0, 1 / 6, 0.0),
                        value=lambda a: (a / 6 + 0.5).clamp(0, 1), scale=6.0),
}


def unit_network(seed: int, unit: str = "relu") -> nn.Sequential:
    torch.manual_seed(seed)
    make = UNITS[unit]["make"]
    network = nn.Sequential(
        nn.Sequential(nn.Linear(6, 10), make()), nn.Sequential(nn.Linear(10, 10), make()),
        nn.Sequential(nn.Linear(10, 10), make()), nn.Linear(10, 4)).double()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(UNITS[unit]["scale"])
    return network


def relu_network(seed: int) -> nn.Sequential:
    return unit_network(seed, "relu")


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


def side_slopes(a: torch.Tensor, unit: str, near: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per unit: the slope of its side (for a unit within ``near`` of a kink: the side below),
    whether it is on a kink, and the slope above minus below there."""
    kinks, slopes = UNITS[unit]["kinks"], torch.tensor(UNITS[unit]["slopes"], dtype=a.dtype)
    side = sum((a > t).long() for t in kinks)
    slope, on_kink, jump = slopes[side], torch.zeros_like(a, dtype=torch.bool), torch.zeros_like(a)
    for index, t in enumerate(kinks):
        here = (a - t).abs() <= near
        slope = torch.where(here, slopes[index], slope)
        jump = torch.where(here, slopes[index + 1] - slopes[index], jump)
        on_kink |= here
    return slope, on_kink, jump


@pytest.mark.parametrize("unit, seed", [("relu", 0), ("relu", 2), ("leaky_relu", 0), ("clip", 2), ("hardsigmoid", 3)])
def test_phase_satisfies_the_kkt_conditions_with_slopes_between_the_sides(unit, seed):
    network = unit_network(seed, unit)
    report, phase, targets = clamped_phase(network, 4)
    assert report.converged and report.residual <= TOL
    assert report.units_on_kink >= 1 and report.pieces_changed >= 2 * report.units_on_kink
    x = [a.detach() for a in phase.state.activities]
    linears = [network[0][0], network[1][0], network[2][0], network[3]]
    pre = [linears[l](x[l]).detach() for l in range(3)]  # a_1..a_3
    errors = [x[l + 1] - UNITS[unit]["value"](pre[l]) for l in range(3)]  # e_1..e_3
    top = errors[2] + output_gradient(linears[3](x[3]).detach(), targets) @ linears[3].weight.detach()
    scale = max(float(e.abs().max()) for e in errors)
    assert float(top.abs().max()) <= 1e-7 * scale  # the output layer is smooth
    on_kink_total, slopes_found = 0, {}
    for b in range(x[0].shape[0]):
        # dE/dx_1 = e_1 - W_2^T (d_2 * e_2), dE/dx_2 = e_2 - W_3^T (d_3 * e_3), d = the units' slopes;
        # on a kink d = d_below + theta (d_above - d_below), theta in [0, 1] found by least squares
        base, columns, where = [], [], []
        for layer in (1, 2):  # the gradient of x_layer, through the slopes of a_{layer+1}
            a, e_above, weight = pre[layer][b], errors[layer][b], linears[layer].weight.detach()
            slope, kink, jump = side_slopes(a, unit, ON_KINK * scale)
            rows = [torch.zeros(10, dtype=a.dtype), torch.zeros(10, dtype=a.dtype)]
            rows[layer - 1] = errors[layer - 1][b] - weight.T @ (slope * e_above)
            base.append(torch.cat(rows))
            for index in kink.nonzero().flatten().tolist():
                column = [torch.zeros(10, dtype=a.dtype), torch.zeros(10, dtype=a.dtype)]
                column[layer - 1] = -weight[index] * e_above[index] * jump[index]
                columns.append(torch.cat(column))
                where.append((layer, index, float(slope[index]), float(jump[index])))
        thetas, residual = least_squares_slopes(torch.stack(base).sum(0), columns)
        assert residual <= 1e-6 * scale
        assert bool(((thetas >= -1e-6) & (thetas <= 1 + 1e-6)).all()), thetas
        on_kink_total += len(where)
        slopes_found.update({(b, layer, index): below + float(theta) * jump
                             for (layer, index, below, jump), theta in zip(where, thetas)})
    assert on_kink_total == report.units_on_kink
    # the state's parameter gradients use the same slopes: dE/dW_l = -(d_l * e_l) x_{l-1}^T / B
    gradients = phase.energy.parameter_gradients(phase.state)
    for layer in (1, 2):
        slope = side_slopes(pre[layer], unit, 0.0)[0]
        for (b, at, index), d in slopes_found.items():
            if at == layer:
                slope[b, index] = d
        expected = -(slope * errors[layer]).T @ x[layer] / x[0].shape[0]
        torch.testing.assert_close(gradients[layer][0], expected, rtol=1e-6, atol=1e-8 * scale)


def test_relu_phase_without_the_active_set_settles_short_of_stationarity():
    report, _, _ = clamped_phase(relu_network(0), 4, active_set=False)
    assert not report.converged and report.settled and report.residual > 1e-3
    assert report.pieces_changed is None and report.units_on_kink is None


@pytest.mark.parametrize("seed", [0, 7])
def test_max_pool_phase_satisfies_the_kkt_conditions_with_split_winners(seed):
    network = pool_network(seed)
    report, phase, targets = clamped_phase(network, 3)
    assert report.converged and report.units_on_kink >= 1
    assert_pool_kkt(network, report, phase, targets)


@pytest.mark.parametrize("seed", [10, 26])
def test_a_window_whose_third_entry_beats_its_pair_grows_its_tie(seed):
    """Here a window solved on the kink of two entries has a third one that overtakes both
    (a three-way tie): the group grows to three entries, and the state reported converged
    satisfies the KKT conditions with the real maxima (the code that kept pairs reported these
    converged off them)."""
    network = pool_network(seed)
    report, phase, targets = clamped_phase(network, 3)
    assert report.converged and report.units_on_kink >= 2
    assert_pool_kkt(network, report, phase, targets)


def assert_pool_kkt(network, report, phase, targets) -> None:
    """The KKT conditions of the pooling net's energy at the phase's state, written here: the
    real maxima, a tie's gradient split among its entries (weights t >= 0 moved from the top
    entry, which keeps 1 - sum t >= 0)."""
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
        columns, groups = [], []
        for w in range(4):
            top_entry = ordered.indices[w, 0]
            base[w, top_entry] -= upstream[b, w]
            for rank in range(1, 4):  # a tie's other entries: weight t moved from the top entry
                entry = ordered.indices[w, rank]
                if ordered.values[w, 0] - ordered.values[w, rank] <= ON_KINK * scale:
                    column = torch.zeros(4, 4, dtype=torch.float64)
                    column[w, top_entry] += upstream[b, w]
                    column[w, entry] -= upstream[b, w]
                    columns.append(column.flatten())
                    groups.append(w)
        weights, residual = least_squares_slopes(base.flatten(), columns)
        assert residual <= 1e-7 * scale
        assert bool((weights >= -1e-6).all()), weights
        for w in set(groups):  # the top entry keeps 1 - sum t >= 0
            assert float(sum(t for t, g in zip(weights, groups) if g == w)) <= 1 + 1e-6
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


def test_in_place_units_are_read_before_they_overwrite_their_input():
    """An in-place ReLU overwrites its pre-activation; the solve reads it first, so the phase
    and its update are those of the same network with out-of-place units (float64)."""
    outputs = []
    for inplace in (False, True):
        torch.manual_seed(0)
        network = relu_network(0)
        for layer in network[:3]:
            layer[1].inplace = inplace
        report, phase, _ = clamped_phase(network, 4)
        assert report.converged and report.units_on_kink >= 1
        outputs.append(phase.energy.parameter_gradients(phase.state))
    for plain, in_place in zip(*outputs):
        for a, b in zip(plain, in_place):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


class _TwiceBlock(nn.Module):
    """x -> relu(W_2 relu(W_1 x)) through one ReLU module called twice."""

    def __init__(self, width: int):
        super().__init__()
        self.l1, self.l2, self.act = nn.Linear(width, width), nn.Linear(width, width), nn.ReLU()

    def forward(self, x):
        return self.act(self.l2(self.act(self.l1(x))))


def test_a_module_called_twice_in_one_pass_refuses_the_solve():
    """One piece per module cannot hold two calls' sides: the solve refuses, and the phase is
    descent's, as without the active set (float64)."""
    reports = []
    for active_set in (True, False):
        torch.manual_seed(0)
        network = nn.Sequential(nn.Sequential(nn.Linear(6, 10), nn.ReLU()), _TwiceBlock(10), nn.Linear(10, 4)).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reports.append(clamped_phase(network, 4, active_set=active_set, converges=True)[0])
    assert reports[0].pieces_changed in (None, 0) and reports[0].units_on_kink is None
    assert (reports[0].converged, reports[0].steps, reports[0].residual) == (
        reports[1].converged, reports[1].steps, reports[1].residual)


def test_pooling_windows_that_overlap_leave_the_phase_to_descent():
    """Windows that do not tile the input (stride 1) are not solved piece by piece: the phase is
    descent's, as without the active set (float64)."""
    reports = []
    for active_set in (True, False):
        torch.manual_seed(0)
        network = nn.Sequential(
            nn.Linear(6, 16),
            nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(9, 8)),
            nn.Linear(8, 3)).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reports.append(clamped_phase(network, 3, active_set=active_set, converges=True)[0])
    assert reports[0].pieces_changed is None and reports[0].units_on_kink is None
    assert (reports[0].converged, reports[0].steps, reports[0].residual) == (
        reports[1].converged, reports[1].steps, reports[1].residual)


def test_whether_a_network_has_pieces_follows_its_modules_settings():
    """``has_pieces`` reads the tree once but the settings at every call: a pool made to overlap
    after the first use takes the solve away, a unit whose forward is replaced leaves the
    pieces (the pool's stay), and the way back gives them back; ``Pieces.of`` agrees."""
    pool, unit = nn.MaxPool2d(2), nn.ReLU()
    network = nn.Sequential(nn.Linear(6, 16), nn.Sequential(nn.Unflatten(1, (1, 4, 4)), pool, nn.Flatten()),
                            nn.Sequential(nn.Linear(4, 3), unit), nn.Linear(3, 2))
    steps = [(lambda: None, 2), (lambda: setattr(pool, "stride", 1), 0), (lambda: setattr(pool, "stride", 2), 2),
             (lambda: setattr(unit, "forward", torch.tanh), 1), (lambda: setattr(pool, "forward", torch.relu), 0),
             (lambda: (delattr(unit, "forward"), delattr(pool, "forward")), 2)]
    for change, count in steps:
        change()
        pieces = Pieces.of(network)
        assert has_pieces(network) is (count > 0) and (0 if pieces is None else len(pieces.pieces)) == count


@pytest.mark.parametrize("rounds", [None, 1])
def test_a_recorded_trace_ends_at_the_state_the_phase_returns(rounds, monkeypatch):
    """With a trace, the phase's last row is the energy of the returned state (written here from
    the PC energy's definition: sum_l 1/2 ||x_l - f_l(x_{l-1})||^2 + lam CE, batch means), and the
    trace says what the report says: after a solve (its solution follows the descent's rows) and
    after a solve that fails (the descent that goes on is recorded)."""
    from pl_energy.core import active_set

    if rounds is not None:
        monkeypatch.setattr(active_set, "MAX_ROUNDS", rounds)
    network = relu_network(0)
    torch.manual_seed(1)
    inputs, targets = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    algorithm = pl_energy.build_algorithm("pc", lam=LAM, tol=TOL, steps=500, error_estimate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pl_energy.NotConvergedWarning)
        contrast = algorithm.phases(network, inputs, targets, as_loss("cross_entropy"), True)
    report, trace, x = contrast.reports[0], contrast.trace, contrast.high.state.activities
    assert report.pieces_changed is not None  # the active set ran
    assert (trace.steps, trace.converged) == (report.steps, report.converged)
    assert report.converged == (rounds is None)
    layers = list(network)
    internal = sum(0.5 * (x[l] - layers[l - 1](x[l - 1])).pow(2).sum() for l in range(1, len(layers))) / 8
    energy = internal + LAM * F.cross_entropy(layers[-1](x[-1]), targets)
    torch.testing.assert_close(trace.total[-1], energy.detach(), rtol=1e-9, atol=1e-12)


class _OneKinkUnit:
    """A piece with one kink unit (sample 0, unit 0) whose f is a given function of its s and
    of the round (the rest of its sample moving)."""

    def __init__(self, f):
        self.f, self.s, self.round = f, 0.0, 0

    def kink_units(self):
        return {(0, 0): (self.s, self.f(self.s, self.round))}

    def set_unit_proposals(self, where, values):
        self.s, self.round = float(values[0]), self.round + 1


def _iterate(f, chord: float, rounds: int = 12, least: int = 1) -> tuple[_OneKinkUnit, list[float], bool]:
    """``_KinkNewton`` on one unit from s = 0 until it reports a cycle, or is solved after at
    least ``least`` rounds: the unit, the largest |f| of each round, and whether it cycled."""
    unit, newton, largest = _OneKinkUnit(f), _KinkNewton(), []
    newton.join(0, 0, 0, chord)
    for _ in range(rounds):
        largest.append(newton.step([unit], 1e-12)[0])
        if (largest[-1] <= 1e-12 and len(largest) >= least) or newton.repeating:
            break
    return unit, largest, newton.repeating


def test_the_kink_iteration_keeps_the_secant_of_a_step_that_made_things_worse():
    """f(s) = 1 - 2 s from a chord of half its slope: the chord's step overshoots to s = 1, where
    |f| is as large as at 0; a restart from the chord alone would step back to 0 and cycle, the
    chord updated by that step's secant has the true slope and lands on the root 1/2."""
    unit, largest, cycled = _iterate(lambda s, _: 1 - 2 * s, chord=-1.0)
    assert unit.s == 0.5 and largest == [1.0, 1.0, 0.0] and not cycled


def test_a_kink_iteration_that_comes_back_unsolved_is_a_cycle():
    """f = +1 below s = 1/2 and -1 above has no root: the iteration comes back to s = 0 with |f|
    no smaller, reports the cycle (``Pieces.cycling`` stops the solve), and never reads solved."""
    _, largest, cycled = _iterate(lambda s, _: 1.0 if s < 0.5 else -1.0, chord=-1.0)
    assert cycled and len(largest) <= CYCLE + 2 and min(largest) == 1.0


@pytest.mark.parametrize("f, chord, least, root", [
    (lambda s, _: 1 - 2 * s, -1e6, 1, 0.5),  # a chord far too steep: a first step of 1e-6, |f| as good as unchanged
    (lambda s, round: (-0.5 if round < 2 else 0.2) - 2 * s, -2.0, 4, 0.1),  # held at s = 0 (f <= 0), then f turns
])
def test_a_stall_or_a_unit_waking_at_its_end_is_not_a_cycle(f, chord, least, root):
    """Rounds in which a unit hardly moves (a step that stalls, or a unit held at s = 0 until
    its f changes sign) are not a return to where it was: the iteration goes on to the root (a
    first version of the stop gave up on such stalls)."""
    unit, largest, cycled = _iterate(f, chord, least=least)
    assert not cycled and largest[-1] <= 1e-12 and abs(unit.s - root) <= 1e-12


def test_a_frozen_piece_linearises_in_closed_form_as_autograd_does():
    """Inside the solve a Linear and its frozen unit (fractional slopes s m_first + (1 - s)
    m_second) are linearised in closed form (``Pieces.derivatives``): output, input and
    parameter VJPs equal autograd's through the frozen forward."""
    torch.manual_seed(0)
    network = pl_energy.mlp([5, 7, 3]).double()
    x, cotangent = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    pieces = Pieces.of(network)
    with pieces:
        pieces.observe()
        network(x)
        pieces.freeze()
        (piece,) = pieces.pieces
        piece.second, piece.weight = 1 - piece.first, torch.rand_like(piece.weight)  # every unit blended
        piece._frozen_maps()
        closed = LayerLinearizer(network[0], derivatives=pieces.derivatives)(x)
        graph = LayerLinearizer(network[0], derivatives=lambda module: None)(x)
    assert isinstance(closed, DenseLinearization) and isinstance(graph, AutogradLinearization)
    assert not torch.equal(piece.slope, piece.slope.round())  # fractional slopes
    torch.testing.assert_close(closed.output, graph.output, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(closed.input_vjp(cotangent), graph.input_vjp(cotangent), rtol=1e-14, atol=1e-14)
    for mine, theirs in zip(closed.parameter_vjp(cotangent), graph.parameter_vjp(cotangent)):
        torch.testing.assert_close(mine, theirs, rtol=1e-14, atol=1e-14)
