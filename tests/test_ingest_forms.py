"""``kma ingest`` of every common checkpoint form, each made here by its real library:
``.safetensors`` (safetensors), Hugging Face folders (transformers' ``save_pretrained``
and a real ``Trainer``'s ``checkpoint-*``), Lightning ``.ckpt`` (a real ``Trainer.fit``),
and pickles that must never run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from pipeline.errors import KMAError
from pipeline.storage.store import TrajectoryStore
from pipeline.workflows.ingest import ingest

from conftest import kma_cmd

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _stored(store, run_id):
    run = TrajectoryStore(str(store), read_only=True).open_run(run_id)
    return run, run.weights().compute()


def _assert_snapshots(run, W, states):
    """Stored row i is ``states[i]``, key by key, bit for bit (float32 data)."""
    assert run.status == "complete" and W.shape[0] == len(states)
    for i, state in enumerate(states):
        for name, arr in run.layout.unflatten(W[i]).items():
            np.testing.assert_array_equal(arr, state[name].float().numpy(), err_msg=f"snapshot {i} {name}")


def _mlp_states(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    out = []
    for _ in range(n):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        out.append({k: v.clone() for k, v in net.state_dict().items()})
    return out


# -- safetensors --------------------------------------------------------------------------
def test_safetensors_series_round_trip(tmp_path):
    from safetensors.torch import save_file

    states = _mlp_states(4)
    files = []
    for i, s in enumerate(states):
        files.append(tmp_path / f"w{i}.safetensors")
        save_file(s, str(files[-1]))
    out = ingest(files, str(tmp_path / "s"), "st")
    assert out["form"] == "safetensors" and out["n_snapshots"] == 4
    run, W = _stored(tmp_path / "s", "st")
    _assert_snapshots(run, W, states)
    assert run.layout.layers == ["0", "2"]


def test_bad_safetensors_and_shard_files_are_one_line(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(KMAError, match=r"junk.safetensors: not a readable safetensors file"):
        ingest([junk], str(tmp_path / "s"), "r")
    shard = tmp_path / "model-00001-of-00002.safetensors"
    shard.write_bytes(b"")
    with pytest.raises(KMAError, match=r"one shard of a sharded checkpoint; give the folder"):
        ingest([shard], str(tmp_path / "s"), "r")
    assert not (tmp_path / "s").exists()


def test_mixed_forms_are_refused_naming_them(tmp_path, kma_env):
    from safetensors.torch import save_file

    s = _mlp_states(3)
    save_file(s[0], str(tmp_path / "a.safetensors"))
    torch.save(s[1], tmp_path / "b.pt")
    torch.save(s[2], tmp_path / "c.pt")
    r = subprocess.run(kma_cmd("ingest", tmp_path / "a.safetensors", tmp_path / "b.pt", tmp_path / "c.pt",
                               "--store", tmp_path / "s", "--run-id", "mix"),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "kma: error: ingest: mixed checkpoint forms (2 PyTorch files, 1 .safetensors file); "
        "a run is one series of one form"]
    assert not (tmp_path / "s").exists()


# -- Hugging Face folders ---------------------------------------------------------------
def _tiny_gpt2(seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16))


def _save_bin(model, folder, shards):
    """The ``pytorch_model.bin`` layout transformers < 5 wrote (5.x writes safetensors
    only): one pickled state_dict, or shards plus ``pytorch_model.bin.index.json``."""
    folder.mkdir(parents=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for j in range(shards):
        part = names[j::shards]
        fname = f"pytorch_model-{j + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in part}, folder / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded"])
def test_hf_checkpoint_folders_by_global_step(tmp_path, layout):
    """``checkpoint-500``, ``-1000``, ``-1500`` given in a shell glob's order (1000, 1500,
    500) are stored by step; single files and sharded indexes read the same."""
    model = _tiny_gpt2(0)
    out = tmp_path / "out"
    states = {}
    for k, step in enumerate((500, 1000, 1500)):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * (k + 1))
        folder = out / f"checkpoint-{step}"
        if layout.startswith("safetensors"):
            model.save_pretrained(folder, max_shard_size="10KB" if layout.endswith("sharded") else "1GB")
        else:
            _save_bin(model, folder, 3 if layout.endswith("sharded") else 1)
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
    listing = sorted(os.listdir(out / "checkpoint-500"))
    if layout.endswith("sharded"):
        assert sum(".index.json" in f for f in listing) == 1 and sum("-of-" in f for f in listing) >= 3, listing
    glob_order = sorted(out.glob("checkpoint-*"))
    assert [p.name for p in glob_order] == ["checkpoint-1000", "checkpoint-1500", "checkpoint-500"]
    ingest(glob_order, str(tmp_path / "s"), "hf")
    ingest([out], str(tmp_path / "s"), "hf-parent")  # the Trainer's output folder stands for them
    for rid in ("hf", "hf-parent"):
        run, W = _stored(tmp_path / "s", rid)
        assert run.attrs["snapshot_steps"] == [500, 1000, 1500]
        kept = set(run.layout.names)
        assert "transformer.h.1.attn.c_attn.weight" in kept
        _assert_snapshots(run, W, [{k: v for k, v in states[s].items() if k in kept} for s in (500, 1000, 1500)])


def test_hf_folder_faults_are_one_line(tmp_path):
    model = _tiny_gpt2(1)
    bad = tmp_path / "checkpoint-1"
    model.save_pretrained(bad, max_shard_size="10KB")
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../outside.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(KMAError, match=r"names shard '../../outside.safetensors', not a file name in"):
        ingest([bad], str(tmp_path / "s"), "r")
    index["weight_map"][first] = "model-00009-of-00009.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(KMAError, match=r"shard model-00009-of-00009.safetensors is missing"):
        ingest([bad], str(tmp_path / "s"), "r")
    (bad / "model.safetensors.index.json").write_text("{")
    with pytest.raises(KMAError, match=r"not a readable shard index"):
        ingest([bad], str(tmp_path / "s"), "r")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KMAError, match=r"empty: a folder without a Hugging Face checkpoint"):
        ingest([empty], str(tmp_path / "s"), "r")
    (empty / "checkpoint-3").mkdir()
    with pytest.raises(KMAError, match=r"checkpoint-3: no model.safetensors"):
        ingest([empty], str(tmp_path / "s"), "r")
    assert not (tmp_path / "s").exists()


def test_a_real_hf_trainer_output_folder(tmp_path):
    """A real ``Trainer`` run (tiny GPT-2 from a config, no download) saving every 5 of
    10 steps: its folders hold a pickled ``training_args.bin`` and optimizer state beside
    the model, which the ingest never opens; ``checkpoint-10`` sorts before
    ``checkpoint-5`` by name, after it by step."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Tokens(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.arange(i, i + 8) % 40
            return {"input_ids": ids, "labels": ids}

    out = tmp_path / "out"
    args = TrainingArguments(output_dir=str(out), max_steps=10, save_steps=5, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], logging_strategy="no", use_cpu=True,
                             disable_tqdm=True, save_only_model=False)
    Trainer(model=_tiny_gpt2(2), args=args, train_dataset=Tokens()).train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    assert (out / "checkpoint-5" / "training_args.bin").is_file()
    ingest([out], str(tmp_path / "s"), "trainer")
    from safetensors.torch import load_file

    run, W = _stored(tmp_path / "s", "trainer")
    assert run.attrs["snapshot_steps"] == [5, 10]
    _assert_snapshots(run, W, [load_file(out / f"checkpoint-{s}" / "model.safetensors") for s in (5, 10)])


# -- Lightning ----------------------------------------------------------------------------
def _lightning_fit(root, epochs=3, save_last=False):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self, width=5, lr=0.05):
            super().__init__()
            self.save_hyperparameters()
            self.model = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.model(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2)}

    torch.manual_seed(0)
    x = torch.randn(16, 3)
    ckpt = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1, save_last=save_last)
    trainer = L.Trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[ckpt], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    module = Module()
    trainer.fit(module, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    return module


def test_lightning_ckpt_series(tmp_path):
    """A real ``Trainer.fit``'s ``.ckpt`` files load under ``weights_only=True`` with no
    allow-list (hyper-parameters, loops, callback and optimizer states are plain
    containers); the ``state_dict`` is stored under the LightningModule's own names (the
    names ``KMACallback`` records), ordered by global step whatever order the files come in."""
    module = _lightning_fit(tmp_path / "ck", epochs=3, save_last=True)
    files = sorted((tmp_path / "ck").glob("epoch=*.ckpt"))
    assert len(files) == 3
    for f in files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(f) == []
    raw = [torch.load(f, weights_only=True) for f in files]
    assert {"hyper_parameters", "loops", "callbacks", "optimizer_states"} <= set(raw[0])
    assert all(k.startswith("model.") for k in raw[0]["state_dict"])
    ingest(files[::-1], str(tmp_path / "s"), "pl")
    run, W = _stored(tmp_path / "s", "pl")
    assert run.attrs["snapshot_steps"] == [2, 4, 6]
    assert run.layout.names == list(module.state_dict())  # the LightningModule's names, as recorded live
    _assert_snapshots(run, W, [r["state_dict"] for r in raw])
    np.testing.assert_array_equal(run.layout.unflatten(W[-1])["model.2.weight"],
                                  module.model[2].weight.detach().numpy())
    # last.ckpt repeats the last epoch's step: refused, naming both
    with pytest.raises(KMAError, match=r"global step 6 again"):
        ingest(sorted((tmp_path / "ck").glob("*.ckpt")), str(tmp_path / "s"), "pl2")


# -- pickles that must not run -----------------------------------------------------------
class _Payload:
    """Unpickling this would write ``marker`` (through ``exec``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _evil(path, marker, how):
    state = {"0.weight": torch.randn(2, 3), "0.bias": torch.zeros(2)}
    obj = {"state_dict": state, "hyper_parameters": {"cfg": _Payload(marker)}, "global_step": 1}
    if how == "zip":
        torch.save(obj, path)
    elif how == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return path


@pytest.mark.parametrize("name, how", [("a.pt", "zip"), ("a.pth", "legacy"), ("a.ckpt", "zip"),
                                       ("a.ckpt", "legacy"), ("a.pkl", "pickle")])
def test_a_malicious_pickle_is_refused_and_never_run(tmp_path, name, how):
    marker = tmp_path / "MARKER"
    good = tmp_path / "good"
    good.mkdir()
    torch.save({"0.weight": torch.randn(2, 3), "0.bias": torch.zeros(2)}, good / name)
    bad = _evil(tmp_path / name, marker, how)
    with pytest.raises(KMAError) as e:
        ingest([good / name, bad], str(tmp_path / "s"), "r")
    assert str(e.value).startswith(f"{bad}: refused: it carries pickled objects beyond tensors")
    assert "exec" in str(e.value) and "nothing in it was run" in str(e.value)
    assert not marker.exists()
    assert not (tmp_path / "s").exists()
    # the pickle really does run when loaded the unsafe way: the test's payload is live
    if how != "pickle":
        torch.load(bad, weights_only=False)
        assert marker.read_text() == "ran"


def test_a_malicious_bin_in_an_hf_folder_is_refused(tmp_path, kma_env):
    marker = tmp_path / "MARKER"
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    _evil(folder / "pytorch_model.bin", marker, "zip")
    r = subprocess.run(kma_cmd("ingest", folder, "--store", tmp_path / "s", "--run-id", "x"),
                       capture_output=True, text=True, env=kma_env, timeout=120)
    assert r.returncode == 2
    bin_ = folder / "pytorch_model.bin"
    assert r.stderr.strip().splitlines() == [
        f"kma: error: {bin_}: refused: it carries pickled objects beyond tensors and plain containers "
        "(builtins.exec); nothing in it was run (save the state_dict alone, or as .safetensors)"]
    assert not marker.exists() and not (tmp_path / "s").exists()


def test_importing_kma_imports_no_framework():
    """The integrations' frameworks load only when their module is imported: ``import
    pipeline``, the CLI, ``kma ingest``'s modules and ``pipeline.integrations`` load none."""
    import sys

    code = ("import sys, pipeline, pipeline.cli, pipeline.workflows.ingest, pipeline.integrations; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'optuna', "
            "'ray.tune', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
