"""Packed variants: train M variants of one architecture as one batched model (issue 14).

Members share the architecture and the schedule (family ``mlp``, depth, width,
activation, task parameters, batch size, epochs, snapshot policy, optimizer type,
momentum, weight decay) and differ in what a sweep varies per variant: initialization,
seed (data split, noise draw, batch order), learning rate and loss (a plain name).

Every parameter is held as one stacked tensor ``(M, *shape)``; a hidden layer is one
``torch.baddbmm`` over the members, ``(M, B, in) @ (M, in, out) + (M, 1, out)``. Each
member draws its data and batch order exactly as :func:`pipeline.training.loop.train`
does for it alone (its own ``torch_seed``), its loss is its own batch mean, and the
optimizer (:class:`PackedOptimizer`) is torch's SGD/Adam/AdamW written out over the
stacked tensors with a per-member learning rate, so a member follows its unpacked
trajectory up to floating-point reassociation (``tests/test_packed.py``).

A member whose loss or weights become non-finite is marked diverged, exactly where the
unpacked loop would stop it, and masked: its parameters and optimizer state are zeroed
and its learning rate set to 0, so the others train on untouched.

Snapshots: one gather of the stacked parameters per snapshot into a reused ``(M, P)``
float32 buffer (``torch.cat`` along the columns, one device-to-host copy), whose rows
are copied straight into each member's store writer row (:meth:`RunWriter.reserve`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..storage.layout import Layout
from .inits import apply_init
from .loop import TrainResult, _check_arguments
from .models import build_activation, build_model
from .restart import init_seed
from .sobolev import metric_name
from .tasks import TaskData, build_task

logger = logging.getLogger(__name__)

PACKABLE_FAMILIES = ("mlp",)
PACKABLE_OPTIMIZERS = ("sgd", "adam", "adamw")
PACKABLE_LOSSES = ("mse", "l1", "huber", "cross_entropy")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8   # torch's defaults, as build_optimizer uses them


# --------------------------------------------------------------------------- model
@dataclass
class PackedMLP:
    """M MLPs of one shape as stacked parameters ``name -> (M, *shape)`` (leaf tensors
    with ``requires_grad``); names as in :class:`pipeline.training.models.MLP`."""

    params: dict[str, torch.Tensor]
    depth: int
    activation: str
    act: torch.nn.Module = field(init=False)

    def __post_init__(self):
        self.act = build_activation(self.activation)

    @property
    def members(self) -> int:
        return int(next(iter(self.params.values())).shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(M, B, in_dim)`` (or ``(B, in_dim)``, shared) → ``(M, B, out_dim)``."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        for k in range(self.depth):
            w, b = self.params[f"layers.{k}.weight"], self.params[f"layers.{k}.bias"]
            x = self.act(torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)))
        return torch.baddbmm(self.params["out.bias"].unsqueeze(1), x,
                             self.params["out.weight"].transpose(1, 2))


def stack_models(models) -> dict[str, torch.Tensor]:
    """``name -> (M, *shape)`` float32 leaves from M models of one architecture."""
    named = [dict(m.named_parameters()) for m in models]
    return {n: torch.stack([p[n].detach() for p in named]).requires_grad_(True) for n in named[0]}


# --------------------------------------------------------------------------- losses
def member_losses(names: list[str], pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each member's batch-mean loss ``(M,)``; ``pred`` ``(M, B, C)``, ``target``
    ``(M, B, C)`` (regression) or ``(M, B)`` int64 labels; ``names[m]`` is member m's
    loss (plain names of :data:`PACKABLE_LOSSES`, torch's default parameters)."""
    groups: dict[str, list[int]] = {}
    for m, name in enumerate(names):
        groups.setdefault(name, []).append(m)
    if len(groups) == 1:
        return _loss(names[0], pred, target)
    out = pred.new_empty(pred.shape[0])
    for name, idx in groups.items():
        i = torch.tensor(idx)
        out = out.index_put((i,), _loss(name, pred[i], target[i]))
    return out


def _loss(name, pred, target):
    if name == "cross_entropy":
        m, b, c = pred.shape
        return F.cross_entropy(pred.reshape(m * b, c), target.reshape(m * b),
                               reduction="none").reshape(m, b).mean(1)
    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}[name]
    return fn(pred, target, reduction="none").flatten(1).mean(1)


# --------------------------------------------------------------------------- optimizer
class PackedOptimizer:
    """torch's single-tensor ``SGD`` / ``Adam`` / ``AdamW`` update, written out over
    stacked ``(M, ...)`` parameters with a per-member learning rate ``lr`` ``(M,)``.
    ``alive`` ``(M,)`` bool: a dead member's learning rate is 0 (nothing moves)."""

    def __init__(self, name: str, params: dict[str, torch.Tensor], lr, *, momentum=0.0,
                 weight_decay=0.0):
        if name not in PACKABLE_OPTIMIZERS:
            raise ConfigError(f"packed training supports optimizers {', '.join(PACKABLE_OPTIMIZERS)}, not {name!r}")
        self.name, self.params = name, params
        self.lr = torch.as_tensor(lr, dtype=torch.float64)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.t = 0
        self._cast: dict = {}
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for n, p in params.items():
            s = {}
            if name in ("adam", "adamw"):
                s = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            elif self.momentum:
                s = {"buf": torch.zeros_like(p)}
            self.state[n] = s

    def _per_member(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``v`` ``(M,)`` float64 → float32 ``(M, 1, ...)`` broadcasting over ``like``
        (converted once per step and dtype, then viewed)."""
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = v.to(device=like.device, dtype=like.dtype)
        return self._cast[key].view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, alive: torch.Tensor) -> None:
        self.t += 1
        lr = self.lr * alive.to(device="cpu", dtype=torch.float64)
        b1, b2 = ADAM_BETAS
        decay = 1 - lr * self.weight_decay
        step_size = lr / (1 - b1 ** self.t)
        factor = {"sgd": lr, "adam": step_size, "adamw": step_size}[self.name]
        self._cast: dict = {}
        decay_cast: dict = {}
        for n, p in self.params.items():
            g, s = p.grad, self.state[n]
            if self.name == "sgd":
                if self.weight_decay:
                    g = g.add(p, alpha=self.weight_decay)
                if self.momentum:
                    # torch's first step sets buf = g; momentum * 0 + g is the same
                    g = s["buf"].mul_(self.momentum).add_(g)
                p.sub_(self._per_member(factor, p) * g)
                continue
            if self.name == "adamw":
                if p.dtype not in decay_cast:
                    decay_cast[p.dtype] = decay.to(device=p.device, dtype=p.dtype)
                p.mul_(decay_cast[p.dtype].view(-1, *([1] * (p.dim() - 1))))
            elif self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            s["exp_avg"].lerp_(g, 1 - b1)
            s["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (s["exp_avg_sq"].sqrt() / math.sqrt(1 - b2 ** self.t)).add_(ADAM_EPS)
            p.sub_(self._per_member(factor, p) * (s["exp_avg"] / denom))

    @torch.no_grad()
    def reset_member(self, m: int) -> None:
        """Zero member ``m``'s state (a diverged member is masked)."""
        for s in self.state.values():
            for t in s.values():
                t[m] = 0


# --------------------------------------------------------------------------- building
def build_packed(variants, device="cpu"):
    """Tasks (one per member, shared between members of one seed), the packed model
    and the layout, each member initialised exactly as :func:`runner.build_parts`."""
    v0 = variants[0]
    task_params = v0.task.model_dump(exclude={"name"})
    tasks_by_seed: dict[int, TaskData] = {}
    tasks, models = [], []
    for v in variants:
        if v.torch_seed not in tasks_by_seed:
            tasks_by_seed[v.torch_seed] = build_task(v.task.name, seed=v.torch_seed, **task_params)
        task = tasks_by_seed[v.torch_seed]
        model = build_model(v.family, task.in_dim, task.out_dim, v.depth, v.width, v.activation)
        apply_init(model, v.init, torch.Generator().manual_seed(init_seed(v)))
        tasks.append(task)
        models.append(model)
    layout = Layout.from_named_shapes((n, p.shape) for n, p in models[0].named_parameters())
    if v0.snapshot.layers != "all":
        layout = layout.select(v0.snapshot.layers)
    params = {n: p.to(device).detach().requires_grad_(True) for n, p in stack_models(models).items()}
    return tasks, PackedMLP(params, v0.depth, v0.activation), layout


# --------------------------------------------------------------------------- training
def train_packed(model: PackedMLP, tasks: list[TaskData], losses: list[str],
                 optimizer: PackedOptimizer, *, epochs: int, batch_size: int,
                 snapshot_every: int, snapshot_unit: str, layout: Layout, sinks: list,
                 generators: list[torch.Generator], device="cpu") -> list[TrainResult]:
    """Train the M members of ``model``; member m's data ``tasks[m]``, loss ``losses[m]``,
    batch order from ``generators[m]``, snapshots to ``sinks[m]`` (as
    :func:`pipeline.training.loop.train`'s ``sink``). Returns one :class:`TrainResult`
    per member (no early stop: members with stopping hooks are not packed)."""
    M = model.members
    for t in tasks:
        _check_arguments(epochs, batch_size, snapshot_every, snapshot_unit, t)
    if len({t.n_train for t in tasks}) != 1 or len({t.kind for t in tasks}) != 1:
        raise ConfigError("packed members need tasks of one kind and size")
    device = torch.device(device)
    x_tr = torch.stack([t.x_train for t in tasks]).to(device)          # (M, n, in)
    y_tr = torch.stack([t.y_train for t in tasks]).to(device)          # (M, n, out) | (M, n)
    x_va = torch.stack([t.x_val for t in tasks]).to(device)
    y_va = torch.stack([t.y_val for t in tasks]).to(device)
    classify = tasks[0].kind == "classification"
    n, n_val = tasks[0].n_train, tasks[0].n_val
    hist_keys = ["train_loss", "val_loss"] + (["train_accuracy", "val_accuracy"] if classify else [])
    histories = [{k: [] for k in hist_keys} for _ in range(M)]
    clean = _CleanErrors(tasks, device)
    alive = [True] * M                       # python bools: read per member per step
    alive_t = torch.ones(M, dtype=torch.bool, device=device)   # the same, for the kernels
    status = [""] * M          # "" while training, then "diverged"
    messages = [""] * M
    ended = [(0, 0)] * M       # (epochs_run, steps) when a member diverged
    n_snap = [0] * M
    steps = 0
    members = torch.arange(M, device=device)
    buried: list[int] = []

    gather = torch.empty((M, layout.size), dtype=torch.float32, device=device)
    host = gather if device.type == "cpu" else torch.empty((M, layout.size), dtype=torch.float32,
                                                           pin_memory=True)
    host_np = host.numpy()
    stacked = [model.params[e.name] for e in layout.entries]

    def kill(m: int, message: str, epoch_done: int) -> None:
        alive[m] = False
        alive_t[m] = False
        status[m], messages[m], ended[m] = "diverged", message, (epoch_done, steps)
        logger.info("packed member %d diverged: %s", m, message)
        buried.append(m)

    def bury() -> None:
        """Zero the parameters and optimizer state of members just marked diverged
        (after the step: the graph of the step holds their parameters)."""
        with torch.no_grad():
            for m in buried:
                for p in model.params.values():
                    p[m] = 0
                optimizer.reset_member(m)
        buried.clear()

    def snapshot(epoch: int, where: str, epoch_done: int) -> None:
        with torch.no_grad():
            torch.cat([p.detach().reshape(M, -1) for p in stacked], dim=1, out=gather)
        if host is not gather:
            host.copy_(gather)
        sums = host.sum(1).tolist()
        for m in range(M):
            if not alive[m]:
                continue
            row = host_np[m]
            if not math.isfinite(sums[m]) and not bool(torch.isfinite(host[m]).all()):
                kill(m, f"weights not finite {where}", epoch_done)
                continue
            sink = sinks[m]
            reserve = getattr(sink, "reserve", None)
            target = reserve() if reserve is not None else None
            if target is not None:
                target[...] = row
                sink(target, epoch=epoch, step=steps)
            else:
                sink(torch.from_numpy(row.copy()), epoch=epoch, step=steps)
            n_snap[m] += 1
        bury()

    snapshot(0, "at initialization", 0)
    for m in range(M):
        if not alive[m]:
            messages[m] = "initial weights are not finite"
    for epoch in range(1, epochs + 1):
        if not any(alive):
            break
        order = torch.stack([torch.randperm(n, generator=g, device=g.device) for g in generators]).to(device)
        loss_sum = [0.0] * M
        correct = torch.zeros(M, dtype=torch.int64, device=device)
        for start in range(0, n, batch_size):
            idx = order[:, start:start + batch_size]                     # (M, b)
            xb, yb = x_tr[members[:, None], idx], y_tr[members[:, None], idx]
            pred = model(xb)
            loss = member_losses(losses, pred, yb)
            values = loss.tolist()
            for m in range(M):
                if alive[m] and not math.isfinite(values[m]):
                    kill(m, f"loss is {values[m]} at epoch {epoch}, step {steps}", epoch - 1)
            if not any(alive):
                bury()
                break
            for p in model.params.values():
                p.grad = None
            torch.where(alive_t, loss, 0.0).sum().backward()
            optimizer.step(alive_t)
            bury()
            steps += 1
            b = idx.shape[1]
            for m in range(M):
                loss_sum[m] += values[m] * b
            if classify:
                correct += (pred.detach().argmax(2) == yb).sum(1)
            if snapshot_unit == "step" and steps % snapshot_every == 0:
                snapshot(epoch, f"at epoch {epoch}, step {steps}", epoch - 1)
        if not any(alive):
            break
        val, val_correct = _evaluate(model, losses, x_va, y_va, batch_size, classify)
        errs = clean(model)
        acc = correct.tolist()
        for m in range(M):
            if not alive[m]:
                continue
            if not math.isfinite(val[m]):
                kill(m, f"validation loss is {val[m]} at epoch {epoch}", epoch - 1)
                continue
            h = histories[m]
            h["train_loss"].append(loss_sum[m] / n)
            h["val_loss"].append(val[m])
            if classify:
                h["train_accuracy"].append(acc[m] / n)
                h["val_accuracy"].append(val_correct[m] / n_val)
            for k, v in errs[m].items():
                h.setdefault(k, []).append(v)
        bury()
        if snapshot_unit == "epoch" and epoch % snapshot_every == 0:
            snapshot(epoch, f"at the end of epoch {epoch}", epoch)
        for m in range(M):
            if alive[m]:
                ended[m] = (epoch, steps)

    return [TrainResult(status[m] or "complete", histories[m], n_snap[m], ended[m][0], ended[m][1],
                        False, messages[m]) for m in range(M)]


@torch.no_grad()
def _evaluate(model, losses, x, y, batch_size, classify):
    """Per member: mean loss over ``x`` in batches (as the unpacked loop sums
    ``loss.item() * b``), and the number correct."""
    M, N = x.shape[0], x.shape[1]
    total, correct = [0.0] * M, [0] * M
    for start in range(0, N, batch_size):
        xb, yb = x[:, start:start + batch_size], y[:, start:start + batch_size]
        pred = model(xb)
        values = member_losses(losses, pred, yb).tolist()
        b = xb.shape[1]
        for m in range(M):
            total[m] += values[m] * b
        if classify:
            for m, c in enumerate((pred.argmax(2) == yb).sum(1).tolist()):
                correct[m] += c
    return [t / max(1, N) for t in total], correct


class _CleanErrors:
    """:func:`pipeline.training.sobolev.clean_errors` of every member at once (float64;
    the projection bases computed once): per member ``{"clean_error", "clean_error_f<f>"}``
    where the task has a grid and a clean target, else ``{}``."""

    def __init__(self, tasks, device):
        t = tasks[0]
        self.on = t.grid is not None and t.clean is not None
        if not self.on:
            return
        self.grid = t.grid.to(device)
        self.clean = t.clean.reshape(-1).double()                       # same for all members
        x = t.grid.reshape(-1).double()
        self.bases = []
        for f in t.params.get("frequencies", []):
            basis = torch.stack([torch.cos(2 * torch.pi * f * x), torch.sin(2 * torch.pi * f * x)], 1)
            if float(f) == 0.0:
                basis = basis[:, :1]
            q, _ = torch.linalg.qr(basis)
            self.bases.append((metric_name(f), q, (q.T @ self.clean).norm().clamp_min(1e-300)))

    @torch.no_grad()
    def __call__(self, model) -> list[dict]:
        if not self.on:
            return [{}] * model.members
        pred = model(self.grid).reshape(model.members, -1).double().cpu()   # (M, n)
        err = pred - self.clean
        cols = {"clean_error": (err.norm(dim=1) / self.clean.norm().clamp_min(1e-300)).tolist()}
        for name, q, den in self.bases:
            cols[name] = ((err @ q).norm(dim=1) / den).tolist()
        return [{k: v[m] for k, v in cols.items()} for m in range(model.members)]
