"""Packed variants: train M variants of one architecture as one batched model.

Members share the architecture and the schedule (family ``mlp``, depth, width,
activation, task parameters, batch size, epochs, snapshot policy, optimizer type,
momentum, weight decay) and differ in what a sweep varies per variant: initialization,
seed (data split, noise draw, batch order), learning rate and loss (a plain name).

Every parameter of all members lives in ONE flat tensor ``flat`` ``(M, P)`` (member m's
parameters in the order of :class:`pipeline.training.models.MLP`'s
``named_parameters``, i.e. the stored layout), the gradients in one ``grad`` ``(M, P)``;
each layer's weight and bias are views into them. A hidden layer is one
``torch.baddbmm`` over the members, ``(M, B, in) @ (M, in, out) + (M, 1, out)``, and its
backward is written out (three batched matrix products and the activation's derivative)
straight into the gradient views, so a step has no autograd graph. The optimizer
(:class:`PackedOptimizer`) is torch's single-tensor SGD/Adam/AdamW on the flat ``(M, P)``
tensors with a per-member learning rate column: a handful of operations per step,
whatever the depth. Each member draws its data and batch order exactly as
:func:`pipeline.training.loop.train` does for it alone (its own ``torch_seed``) and its
loss is its own batch mean, so a member follows its unpacked trajectory up to
floating-point reassociation (``tests/training/test_packed.py``).

A member whose loss or weights become non-finite is marked diverged, exactly where the
unpacked loop would stop it, and masked: its parameters and optimizer state are zeroed
and its learning rate and loss gradient set to 0, so the others train on untouched. A
member one of its callbacks stops (the spectral stop, the bad-initialization policy) is
masked the same way after that epoch, its run complete with its snapshots so far.

Snapshots (:class:`~pipeline.training.packed_snapshots.PackedSnapshots`): one copy of
``flat`` (or of its snapshot columns) per snapshot into a ``(T, M, P)`` host buffer; every
T snapshots each member's rows go straight into its store writer's buffer.
"""

from __future__ import annotations

import logging
import math

import torch

from ..errors import ConfigError
from ..storage.layout import Layout
from .inits import apply_init
from .loop import TrainResult, _check_arguments
from .models import build_model
from .packed_snapshots import PackedSnapshots
from .restart import init_seed
from .sobolev import metric_name
from .tasks import TaskData, build_task

logger = logging.getLogger(__name__)

PACKABLE_FAMILIES = ("mlp",)
PACKABLE_OPTIMIZERS = ("sgd", "adam", "adamw")
PACKABLE_LOSSES = ("mse", "l1", "huber", "cross_entropy")
PACKABLE_ACTIVATIONS = ("tanh", "relu", "sigmoid", "silu", "gelu", "identity", "linear")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8   # torch's defaults, as build_optimizer uses them


# --------------------------------------------------------------------------- activations
def _act(name: str, z: torch.Tensor) -> torch.Tensor:
    if name == "tanh":
        return torch.tanh(z)
    if name == "relu":
        return torch.relu(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "silu":
        return torch.nn.functional.silu(z)
    if name == "gelu":
        return torch.nn.functional.gelu(z)
    return z


def _act_backward(name: str, da: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """dL/dz from dL/da (``da`` may be overwritten); ``a = act(z)``."""
    if name == "tanh":
        return da.mul_(1 - a * a)
    if name == "relu":
        return da.mul_(a > 0)
    if name == "sigmoid":
        return da.mul_(a * (1 - a))
    if name == "silu":
        s = torch.sigmoid(z)
        return da.mul_(s * (1 + z * (1 - s)))
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
        return da.mul_(cdf + z * pdf)
    return da


# --------------------------------------------------------------------------- model
class PackedMLP:
    """M MLPs of one shape as views into one flat ``(M, P)`` tensor.

    ``params[name]`` is a view ``(M, *shape)`` of ``flat`` (names and order as
    :class:`pipeline.training.models.MLP`); ``grads[name]`` the same view of ``grad``.
    ``x`` of :meth:`forward` is ``(M, B, in_dim)`` or ``(B, in_dim)`` (shared).
    """

    def __init__(self, flat: torch.Tensor, shapes: list[tuple[str, tuple]], depth: int,
                 activation: str):
        if activation not in PACKABLE_ACTIVATIONS:
            raise ConfigError(f"packed training supports activations {', '.join(PACKABLE_ACTIVATIONS)}, "
                              f"not {activation!r}")
        self.flat, self.depth, self.activation = flat, int(depth), activation
        self.grad = torch.zeros_like(flat)
        self.params, self.grads, self.spans = {}, {}, {}
        off = 0
        for name, shape in shapes:
            n = math.prod(shape)
            self.spans[name] = (off, n)
            self.params[name] = flat[:, off:off + n].view(flat.shape[0], *shape)
            self.grads[name] = self.grad[:, off:off + n].view(flat.shape[0], *shape)
            off += n
        if off != flat.shape[1]:
            raise ValueError(f"shapes cover {off} of {flat.shape[1]} parameters")
        self._w = [self.params[f"layers.{k}.weight"] for k in range(self.depth)] + [self.params["out.weight"]]
        self._b = [self.params[f"layers.{k}.bias"].unsqueeze(1) for k in range(self.depth)] + [
            self.params["out.bias"].unsqueeze(1)]
        self._gw = [self.grads[f"layers.{k}.weight"] for k in range(self.depth)] + [self.grads["out.weight"]]
        self._gb = [self.grads[f"layers.{k}.bias"] for k in range(self.depth)] + [self.grads["out.bias"]]

    @property
    def members(self) -> int:
        return int(self.flat.shape[0])

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        return x

    def forward(self, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        """``(M, B, out_dim)``; with ``keep`` a list, the (input, pre-activation) of every
        layer is appended to it for :meth:`backward`."""
        a = self._input(x)
        for k in range(self.depth + 1):
            z = torch.baddbmm(self._b[k], a, self._w[k].transpose(1, 2))
            if keep is not None:
                keep.append((a, z))
            a = _act(self.activation, z) if k < self.depth else z
        return a

    __call__ = forward

    def backward(self, dout: torch.Tensor, keep: list) -> None:
        """Write dL/dparameters into ``grad`` from ``dout`` = dL/d(output) ``(M, B, C)``
        and the ``keep`` of the forward pass (every gradient entry is overwritten)."""
        delta = dout
        for k in range(self.depth, -1, -1):
            a_in, _ = keep[k]
            self._gw[k].copy_(torch.bmm(delta.transpose(1, 2), a_in))
            self._gb[k].copy_(delta.sum(1))
            if k == 0:
                break
            da = torch.bmm(delta, self._w[k])
            z_prev = keep[k - 1][1]
            delta = _act_backward(self.activation, da, z_prev, a_in)


def stack_models(models) -> torch.Tensor:
    """``(M, P)`` float32: each model's parameters flattened in ``named_parameters`` order."""
    return torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])


# --------------------------------------------------------------------------- losses
def member_losses(names: list[str], pred: torch.Tensor, target: torch.Tensor,
                  grad_scale: torch.Tensor | None = None):
    """Each member's batch-mean loss ``(M,)`` and, with ``grad_scale`` ``(M,)`` given,
    d(sum_m grad_scale[m] * loss[m]) / d pred ``(M, B, C)``; ``pred`` ``(M, B, C)``,
    ``target`` ``(M, B, C)`` (regression) or ``(M, B)`` int64 labels; ``names[m]`` is
    member m's loss (plain names of :data:`PACKABLE_LOSSES`, torch's default parameters)."""
    if len(set(names)) == 1:
        return _loss(names[0], pred, target, grad_scale)
    loss = pred.new_empty(pred.shape[0])
    dpred = torch.empty_like(pred) if grad_scale is not None else None
    for name in dict.fromkeys(names):
        i = torch.tensor([m for m, n in enumerate(names) if n == name], device=pred.device)
        l_i, d_i = _loss(name, pred[i], target[i], None if grad_scale is None else grad_scale[i])
        loss[i] = l_i
        if dpred is not None:
            dpred[i] = d_i
    return loss, dpred


def _loss(name, pred, target, grad_scale):
    M, B, C = pred.shape
    if name == "cross_entropy":
        logp = torch.log_softmax(pred, 2)
        loss = -logp.gather(2, target.unsqueeze(2)).squeeze(2).mean(1)
        if grad_scale is None:
            return loss, None
        d = logp.exp_()
        d.scatter_add_(2, target.unsqueeze(2), torch.full((M, B, 1), -1.0, dtype=d.dtype, device=d.device))
        return loss, d.mul_((grad_scale / B).view(M, 1, 1))
    diff = pred - target
    if name == "mse":
        loss = (diff * diff).mean((1, 2))
        d = diff * (grad_scale * (2.0 / (B * C))).view(M, 1, 1) if grad_scale is not None else None
    elif name == "l1":
        loss = diff.abs().mean((1, 2))
        d = torch.sign(diff).mul_((grad_scale / (B * C)).view(M, 1, 1)) if grad_scale is not None else None
    elif name == "huber":   # delta 1
        ad = diff.abs()
        loss = torch.where(ad < 1, 0.5 * diff * diff, ad - 0.5).mean((1, 2))
        d = diff.clamp(-1.0, 1.0).mul_((grad_scale / (B * C)).view(M, 1, 1)) if grad_scale is not None else None
    else:
        raise ConfigError(f"packed training supports losses {', '.join(PACKABLE_LOSSES)}, not {name!r}")
    return loss, d


# --------------------------------------------------------------------------- optimizer
class PackedOptimizer:
    """torch's single-tensor ``SGD`` / ``Adam`` / ``AdamW`` update on the flat ``(M, P)``
    parameters ``flat`` from the flat gradients ``grad``, with a per-member learning rate
    ``lr`` ``(M,)``; a dead member (``alive[m]`` false) has learning rate 0."""

    def __init__(self, name: str, flat: torch.Tensor, grad: torch.Tensor, lr, *, momentum=0.0,
                 weight_decay=0.0):
        if name not in PACKABLE_OPTIMIZERS:
            raise ConfigError(f"packed training supports optimizers {', '.join(PACKABLE_OPTIMIZERS)}, not {name!r}")
        self.name, self.flat, self.grad = name, flat, grad
        self.lr = torch.as_tensor(lr, dtype=torch.float64)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.t = 0
        self.state: dict[str, torch.Tensor] = {}
        if name in ("adam", "adamw"):
            self.state = {"exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
            self._denom = torch.empty_like(flat)
        elif self.momentum:
            self.state = {"buf": torch.zeros_like(flat)}

    def _col(self, v: torch.Tensor) -> torch.Tensor:
        """float64 ``(M,)`` → float32 ``(M, 1)`` on the parameters' device."""
        return v.to(device=self.flat.device, dtype=self.flat.dtype).view(-1, 1)

    @torch.no_grad()
    def step(self, alive: torch.Tensor) -> None:
        """``alive`` ``(M,)`` bool (CPU)."""
        self.t += 1
        lr = self.lr * alive.to(torch.float64)
        p, g = self.flat, self.grad
        if self.name == "sgd":
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                # torch's first step sets buf = g; momentum * 0 + g is the same
                g = self.state["buf"].mul_(self.momentum).add_(g)
            p.addcmul_(g, self._col(lr), value=-1)
            return
        b1, b2 = ADAM_BETAS
        if self.name == "adamw":
            p.mul_(self._col(1 - lr * self.weight_decay))
        elif self.weight_decay:
            g = g.add(p, alpha=self.weight_decay)
        m, v, d = self.state["exp_avg"], self.state["exp_avg_sq"], self._denom
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        torch.sqrt(v, out=d).div_(math.sqrt(1 - b2 ** self.t)).add_(ADAM_EPS)
        torch.div(m, d, out=d)
        p.addcmul_(d, self._col(lr / (1 - b1 ** self.t)), value=-1)

    @torch.no_grad()
    def reset_member(self, m: int) -> None:
        """Zero member ``m``'s state (a diverged member is masked)."""
        for s in self.state.values():
            s[m] = 0


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
    full = Layout.from_named_shapes((n, p.shape) for n, p in models[0].named_parameters())
    if [e.name for e in full.entries] != [n for n, _ in models[0].named_parameters()]:
        raise ConfigError("packed training needs each layer's parameters together")  # never for mlp
    layout = full if v0.snapshot.layers == "all" else full.select(v0.snapshot.layers)
    shapes = [(e.name, tuple(e.shape)) for e in full.entries]
    flat = stack_models(models).to(device=device, dtype=torch.float32).contiguous()
    return tasks, PackedMLP(flat, shapes, v0.depth, v0.activation), layout


# --------------------------------------------------------------------------- training
def train_packed(model: PackedMLP, tasks: list[TaskData], losses: list[str],
                 optimizer: PackedOptimizer, *, epochs: int, batch_size: int,
                 snapshot_every: int, snapshot_unit: str, layout: Layout, sinks: list,
                 generators: list[torch.Generator], device="cpu",
                 callbacks: list | None = None) -> list[TrainResult]:
    """Train the M members of ``model``; member m's data ``tasks[m]``, loss ``losses[m]``,
    batch order from ``generators[m]``, snapshots to ``sinks[m]`` (a
    :class:`~pipeline.storage.writer.RunWriter` or any ``sink(flat, epoch=, step=)``).

    ``callbacks[m]``: member m's training callbacks (as :func:`pipeline.training.loop.train`
    takes them; ones that watch snapshots and epochs, such as the spectral stop's monitor):
    ``on_snapshot`` sees each of its stored snapshots, ``on_epoch_end`` its history, and a
    member a callback stops ends there as the unpacked loop would end it (status
    ``complete``, ``stopped_early``): it is masked like a diverged member, its run holding
    its snapshots so far, and the others train on.
    Returns one :class:`TrainResult` per member."""
    M = model.members
    for t in tasks:
        _check_arguments(epochs, batch_size, snapshot_every, snapshot_unit, t)
    if len({t.n_train for t in tasks}) != 1 or len({t.kind for t in tasks}) != 1:
        raise ConfigError("packed members need tasks of one kind and size")
    device = torch.device(device)
    classify = tasks[0].kind == "classification"

    def stacked(name):
        x = torch.stack([getattr(t, name) for t in tasks]).to(device)
        return x if name.startswith("y") and classify else x.reshape(M, x.shape[1], -1)

    x_tr, y_tr, x_va, y_va = (stacked(k) for k in ("x_train", "y_train", "x_val", "y_val"))
    n, n_val = tasks[0].n_train, tasks[0].n_val
    clean = _CleanErrors(tasks, device)
    keys = ["train_loss", "val_loss"] + (["train_accuracy", "val_accuracy"] if classify else []) + clean.names
    hist = torch.zeros((len(keys), epochs, M), dtype=torch.float64)
    n_hist = [0] * M               # epochs of history each member keeps
    alive = torch.ones(M, dtype=torch.bool)                # CPU, for the optimizer
    dead: list[int] = []           # members marked diverged, their state not yet zeroed
    messages = [""] * M
    ended = [(0, 0)] * M           # (epochs_run, steps) of each member
    steps = 0
    rows = torch.arange(M, device=device).unsqueeze(1)
    cols = None
    if [e.name for e in layout.entries] != list(model.spans):      # some layers only
        cols = torch.cat([torch.arange(model.spans[e.name][0], model.spans[e.name][0] + e.size)
                          for e in layout.entries]).to(device)
    snaps = PackedSnapshots(model.flat, cols, sinks)
    callbacks = callbacks or [()] * M
    on_snapshot = [[cb.on_snapshot for cb in cbs if hasattr(cb, "on_snapshot")] for cbs in callbacks]
    on_epoch_end = [[cb.on_epoch_end for cb in cbs if hasattr(cb, "on_epoch_end")] for cbs in callbacks]
    stopped = [False] * M

    def kill(m: int, message: str, epoch_done: int) -> None:
        alive[m] = False
        messages[m], ended[m] = message, (epoch_done, steps)
        logger.info("packed member %d diverged: %s", m, message)
        dead.append(m)

    def bury() -> None:
        """Zero the parameters and optimizer state of members just marked diverged."""
        with torch.no_grad():
            for m in dead:
                model.flat[m] = 0
                optimizer.reset_member(m)
        dead.clear()

    def snapshot(epoch: int, where: str, epoch_done: int) -> None:
        live = alive.tolist()
        bad = snaps.take(epoch, steps, live)
        for m in bad:
            kill(m, f"weights not finite {where}", epoch_done)
        bury()
        for m, hooks in enumerate(on_snapshot):    # after the sink, as the unpacked loop
            if hooks and live[m] and m not in bad:
                for hook in hooks:
                    hook(snaps.last[m], epoch, steps)

    def stop_asked(epoch: int) -> None:
        """Members a callback asks to stop after ``epoch`` end there (masked)."""
        live = alive.tolist()
        for m, hooks in enumerate(on_epoch_end):
            if not (hooks and live[m]):
                continue
            h = {k: hist[i, :n_hist[m], m].tolist() for i, k in enumerate(keys)}
            if any([bool(hook(epoch, h)) for hook in hooks]) and epoch < epochs:   # all of them run
                alive[m], stopped[m] = False, True
                logger.info("packed member %d stopped early by a callback after epoch %d", m, epoch)
                dead.append(m)
        bury()

    snapshot(0, "at initialization", 0)
    for m in (~alive).nonzero().flatten().tolist():
        messages[m] = "initial weights are not finite"   # as the unpacked loop says it
    grad_scale = alive.to(device=device, dtype=torch.float32)
    for epoch in range(1, epochs + 1):
        if not bool(alive.any()):
            break
        order = torch.stack([torch.randperm(n, generator=g, device=g.device) for g in generators]).to(device)
        xe, ye = x_tr[rows, order], y_tr[rows, order]         # the epoch's batches, in order
        loss_sum = torch.zeros(M, dtype=torch.float64)
        correct = torch.zeros(M, dtype=torch.int64, device=device)
        for start in range(0, n, batch_size):
            xb, yb = xe[:, start:start + batch_size], ye[:, start:start + batch_size]
            keep: list = []
            pred = model.forward(xb, keep)
            loss, dpred = member_losses(losses, pred, yb, grad_scale)
            loss_h = loss.detach().to("cpu", torch.float64)
            if not math.isfinite(float(loss_h[alive].sum())):
                values = loss_h.tolist()
                for m in range(M):
                    if alive[m] and not math.isfinite(values[m]):
                        kill(m, f"loss is {values[m]} at epoch {epoch}, step {steps}", epoch - 1)
                if not bool(alive.any()):
                    bury()
                    break
                grad_scale = alive.to(device=device, dtype=torch.float32)
                loss, dpred = member_losses(losses, pred, yb, grad_scale)   # dead: no gradient
            model.backward(dpred, keep)
            optimizer.step(alive)
            bury()
            steps += 1
            loss_sum += loss_h * xb.shape[1]
            if classify:
                correct += (pred.argmax(2) == yb).sum(1)
            if snapshot_unit == "step" and steps % snapshot_every == 0:
                snapshot(epoch, f"at epoch {epoch}, step {steps}", epoch - 1)
                grad_scale = alive.to(device=device, dtype=torch.float32)
        if not bool(alive.any()):
            break
        was_alive = alive.clone()
        val, val_correct = _evaluate(model, losses, x_va, y_va, batch_size, classify)
        bad = was_alive & ~torch.isfinite(val)
        for m in bad.nonzero().flatten().tolist():
            kill(m, f"validation loss is {float(val[m])} at epoch {epoch}", epoch - 1)
        cols = [loss_sum / n, val]
        if classify:
            cols += [correct.cpu().double() / n, val_correct.double() / n_val]
        cols += clean(model)
        hist[:, epoch - 1] = torch.stack(cols)
        live = alive.tolist()
        for m in range(M):
            if live[m]:
                n_hist[m] = epoch
        bury()
        if snapshot_unit == "epoch" and epoch % snapshot_every == 0:
            snapshot(epoch, f"at the end of epoch {epoch}", epoch)
        for m, a in enumerate(live):
            if a:
                ended[m] = (epoch, steps)
        stop_asked(epoch)
        grad_scale = alive.to(device=device, dtype=torch.float32)
    snaps.close()

    out = []
    for m in range(M):
        h = {k: hist[i, :n_hist[m], m].tolist() for i, k in enumerate(keys)
             if n_hist[m] or k not in clean.names}   # (the unpacked run adds those per epoch)
        out.append(TrainResult("diverged" if messages[m] else "complete", h, snaps.count[m],
                               ended[m][0], ended[m][1], stopped[m], messages[m]))
    return out


@torch.no_grad()
def _evaluate(model, losses, x, y, batch_size, classify):
    """Per member ``(M,)`` float64: mean loss over ``x`` in batches (as the unpacked loop
    sums ``loss.item() * b``), and the number correct ``(M,)``."""
    M, N = x.shape[0], x.shape[1]
    total = torch.zeros(M, dtype=torch.float64)
    correct = torch.zeros(M, dtype=torch.int64)
    for start in range(0, N, batch_size):
        xb, yb = x[:, start:start + batch_size], y[:, start:start + batch_size]
        pred = model.forward(xb)
        loss, _ = member_losses(losses, pred, yb)
        total += loss.to("cpu", torch.float64) * xb.shape[1]
        if classify:
            correct += (pred.argmax(2) == yb).sum(1).cpu()
    return total / max(1, N), correct


class _CleanErrors:
    """:func:`pipeline.training.sobolev.clean_errors` of every member at once (float64;
    the projection bases computed once): columns ``(M,)`` named :attr:`names`
    (``clean_error``, ``clean_error_f<f>``) where the task has a grid and a clean target,
    else none."""

    def __init__(self, tasks, device):
        t = tasks[0]
        self.names: list[str] = []
        if t.grid is None or t.clean is None:
            return
        self.grid = t.grid.to(device).reshape(t.grid.shape[0], -1)
        self.clean = t.clean.reshape(-1).double()                       # same for all members
        self.clean_norm = self.clean.norm().clamp_min(1e-300)
        x = t.grid.reshape(-1).double()
        self.bases = []
        for f in t.params.get("frequencies", []):
            basis = torch.stack([torch.cos(2 * torch.pi * f * x), torch.sin(2 * torch.pi * f * x)], 1)
            if float(f) == 0.0:
                basis = basis[:, :1]
            q, _ = torch.linalg.qr(basis)
            self.bases.append((q, (q.T @ self.clean).norm().clamp_min(1e-300)))
            self.names.append(metric_name(f))
        self.names.insert(0, "clean_error")

    @torch.no_grad()
    def __call__(self, model) -> list[torch.Tensor]:
        if not self.names:
            return []
        err = model.forward(self.grid).reshape(model.members, -1).double().cpu() - self.clean   # (M, n)
        return [err.norm(dim=1) / self.clean_norm] + [(err @ q).norm(dim=1) / den for q, den in self.bases]
