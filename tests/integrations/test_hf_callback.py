"""KMATrainerCallback on real Hugging Face Trainer runs: a 2-layer BERT with tiny
dimensions built from a config in the test (nothing downloaded) on random tokens, and a
linear regression module for the stop on convergence."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (BertConfig, BertForSequenceClassification, Trainer,  # noqa: E402
                          TrainerCallback, TrainingArguments)

from pipeline.cli import main  # noqa: E402
from pipeline.integrations.hf import KMATrainerCallback  # noqa: E402
from pipeline.storage.health import shown_status  # noqa: E402
from pipeline.storage.store import TrajectoryStore  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the label says whether the first token is in the lower half."""

    def __init__(self, n, seed, length=8, vocab=32):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(2, vocab, (n, length), generator=g)
        self.y = (self.x[:, 0] < vocab // 2).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones_like(self.x[i]), "labels": self.y[i]}


def _bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2))


def _args(tmp_path, epochs, **kw):
    base = dict(output_dir=str(tmp_path / "hf-out"), num_train_epochs=epochs, per_device_train_batch_size=16,
                per_device_eval_batch_size=32, eval_strategy="epoch", logging_strategy="epoch",
                save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, learning_rate=1e-3, seed=0)
    return TrainingArguments(**{**base, **kw})


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def test_a_trainer_run_is_recorded_per_epoch_and_analysed(tmp_path, capsys):
    store = str(tmp_path / "store")
    model = _bert()
    kma = KMATrainerCallback(store, "bert-tiny", tracking_uri=False)
    trainer = Trainer(model=model, args=_args(tmp_path, 3), train_dataset=Tokens(64, 0),
                      eval_dataset=Tokens(32, 1), callbacks=[kma])
    with kma:
        trainer.train()

    run = TrajectoryStore(store).open_run("bert-tiny")
    assert run.status == "complete" and run.n_snapshots == 4
    assert run.attrs["snapshot_epochs"] == [0, 1, 2, 3] and run.attrs["snapshot_steps"] == [0, 4, 8, 12]
    assert run.layout.size == sum(p.numel() for p in model.parameters())
    assert "bert.encoder.layer.1.attention.self.query" in run.layout.layers
    np.testing.assert_array_equal(run.weights().compute()[-1], _flat(model))
    hist = trainer.state.log_history
    np.testing.assert_allclose(run.metrics["train_loss"], [h["loss"] for h in hist if "loss" in h], rtol=1e-6)
    np.testing.assert_allclose(run.metrics["val_loss"], [h["eval_loss"] for h in hist if "eval_loss" in h],
                               rtol=1e-6)
    assert run.config == {"framework": "transformers", "model": "BertForSequenceClassification", "epochs": 3}

    out = tmp_path / "a.json"
    assert main(["analyze", "--store", store, "--no-mlflow", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert not result["errors"] and result["verdicts"][0]["run_id"] == "bert-tiny"


def test_every_n_steps(tmp_path):
    store = str(tmp_path / "store")
    kma = KMATrainerCallback(store, "steps", every_n_steps=3, tracking_uri=False)
    Trainer(model=_bert(), args=_args(tmp_path, 2), train_dataset=Tokens(64, 0), eval_dataset=Tokens(32, 1),
            callbacks=[kma]).train()
    run = TrajectoryStore(store).open_run("steps")
    assert run.attrs["snapshot_steps"] == [0, 3, 6]          # 4 steps an epoch
    assert run.attrs["snapshot_epochs"] == [0, 1, 2]         # the epoch each was taken in
    assert len(run.metrics["train_loss"]) == 2


class _Boom(TrainerCallback):
    def __init__(self, exc):
        self.exc = exc

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 6:
            raise self.exc


@pytest.mark.parametrize("exc, status", [(RuntimeError("out of memory"), "failed"),
                                         (KeyboardInterrupt(), "running")])
def test_an_exception_in_training_fails_or_interrupts_the_run(tmp_path, exc, status):
    store = str(tmp_path / "store")
    kma = KMATrainerCallback(store, "r", tracking_uri=False)
    trainer = Trainer(model=_bert(), args=_args(tmp_path, 3), train_dataset=Tokens(64, 0),
                      eval_dataset=Tokens(32, 1), callbacks=[kma, _Boom(exc)])
    with pytest.raises(type(exc)):
        with kma:
            trainer.train()
    s = TrajectoryStore(store)
    run = s.open_run("r")
    assert run.status == status and run.n_snapshots == 2       # the initial one and epoch 1's
    if status == "failed":
        assert run.attrs["error"] == "RuntimeError: out of memory"
    else:
        assert shown_status(s, "r") == "interrupted"


class Regression(torch.nn.Module):
    """A plain module the Trainer can train: ``forward(x, labels) -> {"loss"}``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, labels=None):
        pred = self.lin(x)
        return {"loss": ((pred - labels) ** 2).mean(), "logits": pred}


class Points(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def test_stop_on_converged_stops_training(tmp_path):
    store = str(tmp_path / "store")
    kma = KMATrainerCallback(store, "stop", tracking_uri=False, stop_on_converged=True)
    args = _args(tmp_path, 40, per_device_train_batch_size=128, learning_rate=0.3, optim="sgd",
                 lr_scheduler_type="constant", remove_unused_columns=False)
    trainer = Trainer(model=Regression(), args=args, train_dataset=Points(128, 0),
                      eval_dataset=Points(64, 1), callbacks=[kma])
    trainer.train()
    run = TrajectoryStore(store).open_run("stop")
    assert kma.last_verdict["class"] == "converged"
    assert run.status == "complete" and run.attrs["stopped_early"] is True
    assert run.attrs["stop"]["epoch"] < 40 and run.n_snapshots == run.attrs["stop"]["epoch"] + 1
    judged = [h for h in trainer.state.log_history if "kma/converged" in h]
    assert judged[-1]["kma/converged"] == 1.0 and {h["kma/converged"] for h in judged[:-1]} <= {0.0}


def test_resumed_training_records_from_the_epoch_it_resumes_at(tmp_path):
    store = str(tmp_path / "store")
    Trainer(model=_bert(), args=_args(tmp_path, 2, save_strategy="epoch"), train_dataset=Tokens(64, 0),
            eval_dataset=Tokens(32, 1), callbacks=[KMATrainerCallback(store, "part1", tracking_uri=False)]).train()
    ckpt = tmp_path / "hf-out" / "checkpoint-8"
    assert ckpt.is_dir()
    Trainer(model=_bert(), args=_args(tmp_path, 3), train_dataset=Tokens(64, 0), eval_dataset=Tokens(32, 1),
            callbacks=[KMATrainerCallback(store, "part2", tracking_uri=False)]).train(resume_from_checkpoint=str(ckpt))
    s = TrajectoryStore(store)
    one, two = s.open_run("part1"), s.open_run("part2")
    assert two.attrs["snapshot_epochs"] == [2, 3] and two.attrs["snapshot_steps"] == [8, 12]
    np.testing.assert_array_equal(two.weights().compute()[0], one.weights().compute()[-1])
