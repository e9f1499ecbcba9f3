"""Every edge of a run refuses in one line naming the thing and the fix (issue 27): files,
checkpoints, folders, data, batches, precision, a model that does not fit its data. The
``pl-energy`` command prints that line (exit status 2) instead of a traceback."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_helpers import quiet_trainer
from pl_energy import EnergyModule, build_algorithm, mlp
from pl_energy.cli import main
from pl_energy.errors import MissingFile, RefusedType, RefusedValue, UnusableFile

QUICK = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
         "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--agreement.every_n_steps", "0",
         "--model.trace_every_n_steps", "0", "--data.limit_train", "64", "--data.batch_size", "16"]


def refused_line(capsys, argv: list[str]) -> str:
    """The one line the command printed for ``argv``, asserting exit status 2 and no traceback."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("pl-energy: ")]
    assert lines, err[-2000:]
    return lines[-1]


def small_checkpoint(path):
    """A real checkpoint of a tiny bp module, written by a Trainer."""
    torch.manual_seed(0)
    module = EnergyModule(network=mlp([6, 5, 3]), algorithm="bp", trace_every_n_steps=0)
    x, y = torch.rand(8, 6), torch.randint(0, 3, (8,))
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    trainer.save_checkpoint(path)
    return module, (x, y)


# --- 1. files, checkpoints, folders, data, precision: one line ------------------------------------
def test_a_missing_checkpoint_is_one_line_naming_it(mnist_root, tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    line = refused_line(capsys, ["test", "--data.data_dir", str(mnist_root), "--ckpt_path", str(missing), *QUICK])
    assert line == (f"pl-energy: checkpoint {missing} does not exist: give the path of a .ckpt file a run saved "
                    "(in its checkpoints/ folder)")


def test_a_truncated_checkpoint_is_one_line_naming_it(mnist_root, tmp_path, capsys):
    whole = tmp_path / "whole.ckpt"
    small_checkpoint(whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UnusableFile, match=rf"^checkpoint {cut} \(\d+ bytes\) is truncated or corrupt .*"
                                           "use another checkpoint"):
        EnergyModule.load_from_checkpoint(cut)
    assert EnergyModule.load_from_checkpoint(whole).weights_origin == "loaded"  # the whole one loads
    line = refused_line(capsys, ["fit", "--data.data_dir", str(mnist_root), "--ckpt_path", str(cut), *QUICK])
    assert line.startswith(f"pl-energy: checkpoint {cut} (") and "truncated or corrupt" in line


def test_a_root_dir_under_a_file_is_one_line_naming_it(mnist_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = refused_line(capsys, ["fit", "--data.data_dir", str(mnist_root), *QUICK, "--trainer.logger", "true",
                                 "--trainer.default_root_dir", str(blocker / "runs")])
    assert line.startswith("pl-energy: Not a directory: ") and str(blocker) in line
    assert line.endswith("choose a writable folder (--trainer.default_root_dir)")


def test_missing_mnist_files_are_one_line_naming_the_folder(tmp_path, capsys):
    line = refused_line(capsys, ["fit", "--data.data_dir", str(tmp_path), "--data.download", "false", *QUICK])
    assert line.startswith("pl-energy: MNIST not found (download=False): put the four files train-images-idx3-ubyte.gz")
    assert str(tmp_path.resolve() / "MNIST" / "raw") in line


def test_missing_cifar_files_are_refused_as_missing_files(tmp_path):
    from pl_energy.data import CIFAR10DataModule

    with pytest.raises(MissingFile, match="CIFAR"):
        CIFAR10DataModule(data_dir=str(tmp_path), download=False).prepare_data()


def test_bf16_true_is_one_line_and_the_traceback_is_one_variable_away(mnist_root, capsys, monkeypatch):
    argv = ["fit", "--data.data_dir", str(mnist_root), "--trainer.precision", "bf16-true", *QUICK]
    line = refused_line(capsys, argv)
    assert line.startswith("pl-energy: pc_nudge reads its update from a small difference of relaxed states, which "
                           "torch.bfloat16 cannot resolve") and "'32-true'" in line
    monkeypatch.setenv("PL_ENERGY_TRACEBACK", "1")
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RefusedType" in err
    assert err.rstrip().splitlines()[-1] == line


def test_a_network_that_does_not_fit_the_data_is_one_line(mnist_root, capsys):
    line = refused_line(capsys, ["fit", "--data.data_dir", str(mnist_root), "--model.sizes", "[784, 16, 5]", *QUICK])
    assert line == ("pl-energy: MNISTDataModule has 10 classes but the network has 5 outputs: build the network "
                    "with 10 outputs (sizes ending with 10, or num_classes: 10 of its builder)")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only refusals are shortened: an error pl_energy does not explain propagates as it is."""
    import pl_energy.cli as cli

    def broken(args=None, run=True):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "make_cli", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main([])


# --- 2. evaluating weights that were never trained nor loaded ----------------------------------
def test_test_without_weights_is_refused_or_said_when_asked_for(mnist_root, tmp_path, capsys):
    evaluate = ["test", "--data.data_dir", str(mnist_root), "--trainer.limit_test_batches", "1", *QUICK]
    line = refused_line(capsys, evaluate)
    assert line.startswith("pl-energy: test has no weights to evaluate, only the untrained ones the network was "
                           "built with: give --ckpt_path") and "--model.evaluate_initial_weights true" in line
    main([*evaluate, "--model.evaluate_initial_weights", "true"])
    assert ("pl-energy: test evaluates the untrained weights the network was built with "
            "(evaluate_initial_weights=True, no checkpoint)") in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_every_evaluation_refuses_untrained_weights_and_accepts_loaded_ones(stage, tmp_path):
    path = tmp_path / "trained.ckpt"
    trained, (x, y) = small_checkpoint(path)
    data = DataLoader(TensorDataset(x, y), batch_size=4)
    fresh = EnergyModule(network=mlp([6, 5, 3]), algorithm="bp", trace_every_n_steps=0)
    with pytest.raises(RefusedValue, match=f"^{stage} has no weights to evaluate"):
        getattr(quiet_trainer(), stage)(fresh, data)
    getattr(quiet_trainer(), stage)(fresh, data, ckpt_path=path)  # a checkpoint: its weights
    getattr(quiet_trainer(), stage)(trained, data)  # trained in this process
    assert fresh.weights_origin == "loaded" and trained.weights_origin == "trained"


# --- 3. batches given as mappings -------------------------------------------------------------
class Mapped(Dataset):
    def __init__(self, keys=("image", "label")):
        torch.manual_seed(0)
        self.keys, self.x, self.y = keys, torch.rand(16, 6), torch.randint(0, 3, (16,))

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i], "id": i}


@pytest.mark.parametrize("keys", [("x", "y"), ("image", "label"), ("input", "target"), ("pixel_values", "labels")])
def test_mapping_batches_train_as_their_tuples_do(keys):
    """Oracle: the same data as (inputs, targets) tuples gives the same weights."""
    def trained(data, **kwargs):
        torch.manual_seed(1)
        module = EnergyModule(network=mlp([6, 5, 3]), algorithm="pc_nudge", trace_every_n_steps=0, **kwargs)
        quiet_trainer(max_epochs=1).fit(module, DataLoader(data, batch_size=8))
        return module

    mapped = Mapped(keys)
    as_tuples = trained(TensorDataset(mapped.x, mapped.y))
    as_mappings = trained(mapped)
    for a, b in zip(as_tuples.parameters(), as_mappings.parameters()):
        assert torch.equal(a, b)
    predictions = quiet_trainer().predict(as_mappings, DataLoader(mapped, batch_size=8))
    assert torch.equal(torch.cat([p["predictions"] for p in predictions]), as_mappings(mapped.x).argmax(-1))


def test_mapping_batches_with_other_keys_need_batch_keys():
    data = DataLoader(Mapped(("pixels", "classes")), batch_size=8)
    module = EnergyModule(network=mlp([6, 5, 3]), algorithm="bp", trace_every_n_steps=0)
    with pytest.raises(RefusedValue, match=r"^the batch is a mapping with keys \['classes', 'id', 'pixels'\] and none "
                                           r"of the pairs .* name its input and target keys with "
                                           r"EnergyModule\(batch_keys=\['<inputs>', '<targets>'\]\)"):
        quiet_trainer(max_steps=1).fit(module, data)
    keyed = EnergyModule(network=mlp([6, 5, 3]), algorithm="bp", trace_every_n_steps=0,
                         batch_keys=["pixels", "classes"])
    quiet_trainer(max_steps=1).fit(keyed, data)
    assert keyed.weights_origin == "trained"
    with pytest.raises(RefusedValue, match="lacks \\['labels'\\]"):
        keyed.batch_keys = ("pixels", "labels")
        keyed.prepare_batch(next(iter(data)))
    with pytest.raises(RefusedValue, match="batch_keys must name two keys"):
        EnergyModule(network=mlp([6, 5, 3]), batch_keys="image")


# --- 4. shape contracts ----------------------------------------------------------------------
def test_num_classes_against_the_output_width_is_checked_at_construction():
    with pytest.raises(RefusedValue, match=r"^num_classes=10 but the network has 4 outputs: give its last layer 10 "
                                           r"outputs \(sizes ending with 10\), or leave num_classes unset"):
        EnergyModule(network=mlp([6, 5, 4]), num_classes=10)
    assert EnergyModule(network=mlp([6, 5, 4]), num_classes=4).num_classes == 4


def test_the_first_batch_is_checked_against_the_network():
    module = EnergyModule(network=mlp([6, 5, 4]), algorithm="bp", trace_every_n_steps=0)
    with pytest.raises(RefusedValue, match=r"^the batch's inputs have 7 features \(shape \(8, 7\)\) but the network's "
                                           r"first layer takes 6: build the network for this data"):
        module.prepare_batch((torch.rand(8, 7), torch.zeros(8, dtype=torch.long)))
    with pytest.raises(RefusedValue, match=r"^the batch has class 7 but the network has 4 outputs \(classes 0\.\.3\)"):
        quiet_trainer(max_steps=1).fit(module, DataLoader(TensorDataset(torch.rand(8, 6), torch.full((8,), 7)),
                                                          batch_size=8))


def test_bp_refuses_a_class_beyond_the_output_width_in_one_line():
    """Before, torch's raw IndexError ('Target 7 is out of bounds')."""
    with pytest.raises(ValueError, match=r"^class indices must lie in \[0, 4\), got \[0, 7\]$"):
        build_algorithm("bp").estimate(mlp([6, 5, 4]), torch.rand(3, 6), torch.tensor([0, 7, 1]))


# --- 5. numbers known far off: refused by default ---------------------------------------------
def test_batchnorm_in_training_mode_is_refused_by_the_module_unless_accepted():
    def network():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh()),
                                   torch.nn.Linear(5, 3))

    data = DataLoader(TensorDataset(torch.rand(16, 6), torch.randint(0, 3, (16,))), batch_size=8)
    with pytest.raises(RefusedValue, match=r"^pc_nudge with BatchNorm in training mode \(0\.1\).*--model\."
                                           r"allow_constant_batch_statistics true"):
        quiet_trainer(max_steps=1).fit(EnergyModule(network=network(), trace_every_n_steps=0), data)
    accepted = EnergyModule(network=network(), trace_every_n_steps=0, allow_constant_batch_statistics=True)
    with pytest.warns(UserWarning, match="statistics held constant"):
        quiet_trainer(max_steps=1).fit(accepted, data)
    quiet_trainer(max_steps=1).fit(EnergyModule(network=network(), algorithm="bp", trace_every_n_steps=0), data)


# --- 7. warnings once per run ------------------------------------------------------------------
@pytest.mark.parametrize("rank, shown", [(0, 1), (1, 0)])
def test_pl_energys_warnings_are_shown_by_rank_zero_only(rank, shown):
    from pl_energy.algorithms import NotConvergedWarning

    module = EnergyModule(network=mlp([6, 5, 3]), algorithm="pc_nudge", trace_every_n_steps=0,
                          algorithm_hparams={"tol": 1e-30, "steps": 2})
    module._trainer = types.SimpleNamespace(global_rank=rank, datamodule=None,
                                            strategy=types.SimpleNamespace(checkpoint_io=None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.setup("fit")  # what every process of a DDP run does first
        module.algorithm.estimate(module.network, torch.rand(4, 6), torch.tensor([0, 1, 2, 0]))
    assert sum(issubclass(w.category, NotConvergedWarning) for w in caught) == shown
