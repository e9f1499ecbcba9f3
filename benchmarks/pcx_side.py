#!/usr/bin/env python3
"""The PCX side of ``bench_pcx.py``: the same MLP, batch and PC-Nudge inference in PCX (JAX), as a worker.

Run by ``bench_pcx.py`` with the Python of an environment that has PCX (Pinchetti et al. 2024,
github.com/liukidar/pcx) and JAX; it imports neither torch nor pl_energy. It reads the weights and
the batch from an ``.npz`` file the driver writes, then answers one JSON command per line on
stdin with one JSON line on stdout:

    {"cmd": "round", "inner": k, "rotate": r}  -> {"times": {variant: seconds}}  (median of k calls)
    {"cmd": "gradients", "steps": T, "path": p} -> {"path": p}  (the gradients, saved as .npz)
    {"cmd": "quit"}

What each variant computes (the network: Linear(784,128)-ReLU-Linear(128,64)-ReLU-Linear(64,10)):

``pc_nudge_T``: PCX's own way of writing a PC network (its tutorials' ``train_on_batch``):
one ``pxc.Vode`` after each hidden layer's activation (``se_energy``: 1/2 ||h - u||^2) and
one on the logits whose value ``h`` is frozen to the one-hot target with the energy
``lam * ce_energy`` (``-lam sum_k y_k log softmax(u)_k``), so per sample

    E_b = 1/2 ||h_1 - relu(W_1 x + b_1)||^2 + 1/2 ||h_2 - relu(W_2 h_1 + b_2)||^2
          + lam CE(W_3 h_2 + b_3, y)

(the pl_energy energy, ``pl_energy.core.predictive_coding``). The energy is ``psum``-ed over the
batch (the tutorials' ``jax.lax.psum(model.energy(), "batch")``), so the gradient with respect to
h_b is dE_b/dh_b and ``optax.sgd(step_size)`` moves each sample's h by -step_size dE_b/dh_b,
pl_energy's ``solver="gd"``. ``STATUS.INIT`` sets every h to its prediction (the feedforward
pass), then T inference steps (a Python loop unrolled inside ``pxf.jit``, as in the tutorials), then
the weight gradient of the summed energy at the final h, scaled by 1/(lam B): the
(1/lam) dE/dtheta of the batch-mean energy that pl_energy's pc_nudge returns. Nothing is applied
to the weights, so every call starts from the same network.

``bp_pcx``: PCX's own backprop: the same ``pxnn.Linear`` layers without vodes, the batch-mean
cross-entropy, ``pxf.value_and_grad`` over ``pxnn.LayerParam`` inside ``pxf.jit``.

``bp_jax``: plain ``jax.jit(jax.grad(loss))`` of the same function over a tuple of arrays.

Timing: each call blocks until its outputs are ready (``jax.block_until_ready``); PCX's calls
include its Python-side work of moving parameters across the jit boundary, which a user pays.
"""

from __future__ import annotations

import json
import os
import sys

# one compute thread: set before JAX is imported (the driver passes the same in the environment)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pcx as px  # noqa: E402
import pcx.functional as pxf  # noqa: E402
import pcx.nn as pxnn  # noqa: E402
import pcx.predictive_coding as pxc  # noqa: E402
import pcx.utils as pxu  # noqa: E402

from bench_pcx import time_round  # noqa: E402  (this folder is on sys.path: the script's own)

LAYER_NAMES = ("0.0", "1.0", "2")  # the torch module names of the three Linear layers


def nudged_ce_energy(lam: float):
    """``lam`` times PCX's ``ce_energy``: the supervised term lam L of PC-Nudge."""

    def energy(vode, rkg=px.RKG):
        return lam * pxc.ce_energy(vode, rkg)

    return energy


class PCMLP(pxc.EnergyModule):
    """Linear-ReLU-...-Linear with a vode after each hidden activation and one on the logits."""

    def __init__(self, sizes: list[int], lam: float):
        super().__init__()
        self.act_fn = px.static(jax.nn.relu)
        self.layers = [pxnn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.vodes = [pxc.Vode() for _ in sizes[1:-1]] + [pxc.Vode(nudged_ce_energy(lam))]
        self.vodes[-1].h.frozen = True

    def __call__(self, x, y):
        for vode, layer in zip(self.vodes[:-1], self.layers[:-1]):
            x = vode(self.act_fn(layer(x)))
        self.vodes[-1](self.layers[-1](x))
        if y is not None:
            self.vodes[-1].set("h", y)
        return self.vodes[-1].get("u")


class BPMLP(px.Module):
    """The same layers without vodes, for PCX's backprop."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.act_fn = px.static(jax.nn.relu)
        self.layers = [pxnn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = self.act_fn(layer(x))
        return self.layers[-1](x)


VODES = pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0))


@pxf.vmap(VODES, in_axes=(0, 0), out_axes=0)
def forward(x, y, *, model: PCMLP):
    return model(x, y)


@pxf.vmap(VODES, in_axes=(0,), out_axes=(None, 0), axis_name="batch")
def energy(x, *, model: PCMLP):
    y_ = model(x, None)
    return jax.lax.psum(model.energy(), "batch"), y_


@pxf.jit(static_argnums=0)
def pc_gradients(steps: int, x, y, *, model: PCMLP, optim_h: pxu.Optim):
    """T fixed steps of inference from the feedforward pass, then dE/dtheta (summed over the batch)."""
    model.train()
    with pxu.step(model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
        forward(x, y, model=model)
    optim_h.init(pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
    inference = pxf.value_and_grad(pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]), has_aux=True)
    for _ in range(steps):
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = inference(energy)(x, model=model)
        optim_h.step(model, g["model"])
    with pxu.step(model, clear_params=pxc.VodeParam.Cache):
        _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(x, model=model)
    return [(layer.nn.weight.get(), layer.nn.bias.get()) for layer in g["model"].layers]


@pxf.vmap(pxu.M(pxnn.LayerParam).to((None, None)), in_axes=(0,), out_axes=0)
def logits_of(x, *, model: BPMLP):
    return model(x)


def batch_ce(x, y, *, model: BPMLP):
    return -(y * jax.nn.log_softmax(logits_of(x, model=model))).sum(axis=1).mean()


@pxf.jit()
def bp_gradients(x, y, *, model: BPMLP):
    _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]))(batch_ce)(x, y, model=model)
    return [(layer.nn.weight.get(), layer.nn.bias.get()) for layer in g["model"].layers]


def plain_loss(params, x, y):
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w.T + b)
    w, b = params[-1]
    return -(y * jax.nn.log_softmax(h @ w.T + b)).sum(axis=1).mean()


plain_bp = jax.jit(jax.grad(plain_loss))


class Side:
    """The networks, batch and variants of one benchmark run, built from the driver's .npz file."""

    def __init__(self, path: str):
        data = np.load(path)
        self.x = jnp.asarray(data["x"], dtype=jnp.float32)
        self.y = jax.nn.one_hot(jnp.asarray(data["y"]), int(data["classes"]), dtype=jnp.float32)
        self.lam = float(data["lam"])
        self.step_size = float(data["step_size"])
        self.steps = [int(t) for t in data["steps"]]
        weights = [(jnp.asarray(data[f"{name}.weight"]), jnp.asarray(data[f"{name}.bias"]))
                   for name in LAYER_NAMES]
        sizes = [weights[0][0].shape[1]] + [w.shape[0] for w, _ in weights]
        self.pc = PCMLP(sizes, self.lam)
        self.bp = BPMLP(sizes)
        for model in (self.pc, self.bp):
            for layer, (w, b) in zip(model.layers, weights):
                layer.nn.weight.set(w)
                layer.nn.bias.set(b)
        self.params = tuple(weights)
        self.optim_h = pxu.Optim(lambda: optax.sgd(self.step_size))
        with pxu.step(self.pc, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):  # shapes the vodes
            forward(self.x, self.y, model=self.pc)
        self.variants = {"bp_jax": lambda: plain_bp(self.params, self.x, self.y),
                         "bp_pcx": lambda: bp_gradients(self.x, self.y, model=self.bp)}
        for steps in self.steps:
            self.variants[f"pc_nudge_{steps}"] = self._pc(steps)
        for call in self.variants.values():  # compile
            jax.block_until_ready(call())

    def _pc(self, steps: int):
        return lambda: pc_gradients(steps, self.x, self.y, model=self.pc, optim_h=self.optim_h)

    def gradients(self, steps: int) -> dict[str, np.ndarray]:
        """(1/lam) dE/dtheta of the batch-mean energy after ``steps`` steps, by torch parameter name."""
        scale = 1.0 / (self.lam * self.x.shape[0])
        grads = jax.block_until_ready(self._pc(steps)())
        out = {}
        for name, (w, b) in zip(LAYER_NAMES, grads):
            out[f"{name}.weight"] = np.asarray(w) * scale
            out[f"{name}.bias"] = np.asarray(b) * scale
        return out

    def round(self, inner: int, rotate: int) -> dict[str, float]:
        blocking = {key: (lambda call=call: jax.block_until_ready(call())) for key, call in self.variants.items()}
        return time_round(blocking, inner, rotate)


def serve(path: str) -> None:
    side = Side(path)
    versions = {"jax": jax.__version__, "pcx": _version("pcx"), "devices": str(jax.devices())}
    print(json.dumps({"ready": True, "versions": versions}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "round":
            reply = {"times": side.round(int(command["inner"]), int(command["rotate"]))}
        elif command["cmd"] == "gradients":
            np.savez(command["path"], **side.gradients(int(command["steps"])))
            reply = {"path": command["path"]}
        else:
            reply = {"error": f"unknown command {command['cmd']!r}"}
        print(json.dumps(reply), flush=True)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    serve(sys.argv[1])
