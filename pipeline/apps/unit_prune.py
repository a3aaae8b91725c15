"""Structured (whole-unit) pruning scored by the Koopman-predicted future weights.

The weight-level Koopman pruning of :mod:`pipeline.apps.prune` (Redman et al., ICLR
2022) ranks each weight by the mode of the eigenvalue nearest 1 and masks entries: it
agrees with magnitude pruning near convergence and saves no compute. Here the unit of
pruning is a hidden unit of an MLP (its incoming row, its bias, its outgoing column),
so removing it makes the dense layers physically smaller, and the score is the unit's
norm in the weights *predicted* ``horizon`` snapshots ahead from every (certified, or
every non-growing) Koopman mode of a short early window (Dogra & Redman, NeurIPS 2020,
extrapolate the same way)::

    x_last = Σ_i c_i z_i + r                  (c: least squares on the unit modes z_i)
    x_pred = x_last + Re Σ_{i ∈ S} c_i (λ_i^H − 1) z_i

``S``: the pairs with ``|λ_i| <= 1`` that are certified (``κ · residual <= residual_tol``,
:meth:`WindowResult.reliable`), or all pairs with ``|λ_i| <= 1`` when ``residual_tol``
is None; growing and uncertified modes are held where they are. A contracting mode is
thus removed by the far future, a mode at λ ≈ 1 kept: a unit that is large now but
decaying scores low, a small unit heading to a large fixed point scores high.
``groups`` fits one operator per column range (per layer) instead of one for the whole
network.

Flat layout: ``torch.nn.utils.parameters_to_vector`` of an ``nn.Sequential`` of
``Linear`` layers (and parameter-free activations): ``W_0`` (row-major, ``(h_1, d)``),
``b_0``, ``W_1``, ``b_1``, ... Shapes: snapshots ``(P,)``, a window ``Y`` ``(W, P)``.

CNN channels: the same scores, selection and prediction apply to any list of index
groups, so a convolution's *output channel* is a group too (:func:`conv_channels`: its
filter ``weight[j]`` and its ``bias[j]``, in the flat layout of ``model.parameters()``);
:func:`module_ranges` gives the per-layer column ranges of any model, and
:func:`shrink_cnn` builds the physically smaller copy of a CNN with ``layers`` (a
ModuleList of ``Conv2d``) and a Linear readout ``out`` (the family ``cnn`` of
:mod:`pipeline.training.models`): the dropped channels' filters and biases go, and so do
the matching input slices of the next convolution and the matching columns of ``out``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .prune import window_fit

__all__ = [
    "conv_channels",
    "layer_ranges",
    "mlp_units",
    "module_ranges",
    "predict_weights",
    "select_units",
    "shrink_cnn",
    "shrink_mlp",
    "unit_norms",
    "unit_scores",
]


def _linears(model: nn.Sequential) -> list[nn.Linear]:
    lin = [m for m in model if isinstance(m, nn.Linear)]
    if any(sum(p.numel() for p in m.parameters(recurse=False)) and not isinstance(m, nn.Linear)
           for m in model):
        raise ValueError("only Linear layers may hold parameters")
    return lin


def layer_ranges(sizes) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: flat columns of each Linear layer (weight and bias) of an
    MLP with layer sizes ``sizes`` = ``[d, h_1, ..., h_L, k]``."""
    out, off = [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        out.append((off, off + a * b + b))
        off += a * b + b
    return out


def mlp_units(sizes) -> list[list[np.ndarray]]:
    """Flat indices of every hidden unit.

    Parameters
    ----------
    sizes : sequence of int
        ``[d, h_1, ..., h_L, k]`` (input, hidden widths, output).

    Returns
    -------
    list over hidden layers ``l = 1..L`` of lists over units ``j`` of int arrays: the flat
    indices of ``W_{l-1}[j, :]``, ``b_{l-1}[j]`` and ``W_l[:, j]`` (incoming, bias, outgoing).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 3 or min(sizes) < 1:
        raise ValueError(f"sizes must be [d, h_1, ..., k] with at least one hidden layer, got {sizes}")
    ranges = layer_ranges(sizes)
    units = []
    for l in range(1, len(sizes) - 1):
        d_in, h, d_out = sizes[l - 1], sizes[l], sizes[l + 1]
        s_in, s_out = ranges[l - 1][0], ranges[l][0]
        units.append([np.concatenate([s_in + j * d_in + np.arange(d_in),
                                      [s_in + h * d_in + j],
                                      s_out + np.arange(d_out) * h + j]).astype(np.int64)
                      for j in range(h)])
    return units


def predict_weights(Y, horizon: int, rank: int | None = None,
                    residual_tol: float | None = None, groups=None) -> tuple[np.ndarray, dict]:
    """Weights predicted ``horizon`` snapshots after ``Y[-1]`` from the window's modes.

    Parameters
    ----------
    Y : ndarray, shape (W, P)
        Consecutive snapshots, oldest first.
    horizon : int
    rank : int, optional
        DMD truncation (default ``(W - 1) // 2``).
    residual_tol : float or None
        Use only pairs certified at this ``κ · residual`` (None: every non-growing pair).
    groups : list of (int, int), optional
        Column ranges fitted by separate operators (columns outside them are held);
        default: one operator for all columns.

    Returns
    -------
    x_pred : ndarray, shape (P,), float64
    info : dict
        ``used`` and ``rank`` (summed over groups), ``certified`` (pairs certified at
        ``residual_tol`` or, when None, at 0.05, for the record).
    """
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] < 3:
        raise ValueError(f"need a (W >= 3, P) window, got shape {Y.shape}")
    x = Y[-1].astype(np.float64)
    pred = x.copy()
    info = {"used": 0, "rank": 0, "certified": 0}
    for a, b in (groups or [(0, Y.shape[1])]):
        Yg = Y[:, a:b]
        if not np.any(Yg):
            continue
        _, res, modes = window_fit(Yg, rank)
        lam = res.eigenvalues
        cert = res.reliable(0.05 if residual_tol is None else residual_tol)
        use = (np.abs(lam) <= 1.0) & (cert if residual_tol is not None else True)
        info["rank"] += int(res.rank)
        info["certified"] += int(cert.sum())
        info["used"] += int(use.sum())
        if not use.any():
            continue
        Z = modes()
        c = np.linalg.lstsq(Z.T, x[a:b].astype(np.complex128), rcond=None)[0]
        delta = ((c[use] * (lam[use] ** int(horizon) - 1.0)) @ Z[use]).real
        if np.isfinite(delta).all():
            pred[a:b] += delta
    return pred, info


def unit_norms(x, units) -> list[np.ndarray]:
    """Per hidden layer, ``(h_l,)``: each unit's norm ``‖(W_in[j,:], b[j], W_out[:,j])‖``
    in the flat weights ``x`` ``(P,)`` — or, for any other index groups (e.g.
    :func:`conv_channels`), each group's norm."""
    x = np.asarray(x, dtype=np.float64)
    return [np.array([np.linalg.norm(x[ix]) for ix in layer]) for layer in units]


def unit_scores(method: str, units, Y=None, horizon: int = 0, rank: int | None = None,
                residual_tol: float | None = None, groups=None, rng=None) -> tuple[list, dict]:
    """Importance of every hidden unit, or of every group of ``units`` (e.g. the output
    channels of :func:`conv_channels`) (larger = keep).

    ``method``: ``"magnitude"`` (norm in the current weights ``Y[-1]``), ``"koopman"``
    (norm in :func:`predict_weights` ``(Y, horizon, rank, residual_tol, groups)``) or
    ``"random"`` (uniform scores from ``rng``). Returns ``(scores per layer, info)``.
    """
    if method == "random":
        rng = np.random.default_rng(rng)
        return [rng.random(len(layer)) for layer in units], {}
    Y = np.asarray(Y)
    if method == "magnitude":
        return unit_norms(Y[-1], units), {}
    if method == "koopman":
        pred, info = predict_weights(Y, horizon, rank, residual_tol, groups)
        return unit_norms(pred, units), info
    raise ValueError(f"unknown method {method!r}; known: magnitude, koopman, random")


def select_units(scores, sparsity: float) -> list[np.ndarray]:
    """Per layer, the sorted indices of the kept units: the ``round((1 - sparsity) · h)``
    (at least 1) largest scores; ties broken by index."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    keep = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        k = max(1, int(round((1.0 - sparsity) * s.size)))
        keep.append(np.sort(np.argsort(-s, kind="stable")[:k]))
    return keep


@torch.no_grad()
def shrink_mlp(model: nn.Sequential, keep) -> nn.Sequential:
    """A physically smaller copy of ``model`` holding only the ``keep`` units of each
    hidden layer (its Linear layers' rows/columns cut; activations copied)."""
    lin = _linears(model)
    if len(keep) != len(lin) - 1:
        raise ValueError(f"need a keep list per hidden layer ({len(lin) - 1}), got {len(keep)}")
    rows = [torch.as_tensor(np.asarray(k), dtype=torch.long) for k in keep] + [None]
    layers, li = [], 0
    for m in model:
        if not isinstance(m, nn.Linear):
            layers.append(type(m)())
            continue
        w, b = m.weight, m.bias
        if li > 0:
            w = w[:, rows[li - 1]]
        if rows[li] is not None:
            w, b = w[rows[li]], (b[rows[li]] if b is not None else None)
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
        layers.append(new)
        li += 1
    return nn.Sequential(*layers)


def _param_offsets(model: nn.Module) -> dict[int, int]:
    """``id(parameter) -> its first column`` in ``parameters_to_vector(model.parameters())``."""
    out, off = {}, 0
    for p in model.parameters():
        out[id(p)] = off
        off += p.numel()
    return out


def module_ranges(model: nn.Module) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: the flat columns of each module that holds parameters
    directly (weight and bias of one layer), in ``model.parameters()`` order; for an MLP
    the same as :func:`layer_ranges`. A module whose parameters are not contiguous in
    that order is refused."""
    offsets, out = _param_offsets(model), []
    for m in model.modules():
        ps = list(m.parameters(recurse=False))
        if not ps:
            continue
        start = offsets[id(ps[0])]
        stop = start + sum(p.numel() for p in ps)
        if any(offsets[id(p)] != start + sum(q.numel() for q in ps[:i])
               for i, p in enumerate(ps)):
            raise ValueError(f"the parameters of {type(m).__name__} are not contiguous")
        out.append((start, stop))
    return sorted(out)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    layers = getattr(model, "layers", None)
    if layers is None or not isinstance(getattr(model, "out", None), nn.Linear) or not len(
            layers) or not all(isinstance(m, nn.Conv2d) and m.groups == 1 for m in layers):
        raise ValueError("need a CNN with `layers` (Conv2d, groups=1) and a Linear `out`")
    return list(layers)


def conv_channels(model: nn.Module, outgoing: bool = False) -> list[list[np.ndarray]]:
    """Flat indices of every output channel of every convolution of a CNN.

    Parameters
    ----------
    model : nn.Module
        With ``layers`` (a ModuleList of ``Conv2d``) and a Linear ``out``.
    outgoing : bool
        Also the weights that read the channel (as :func:`mlp_units` takes a unit's
        outgoing column): the next convolution's input slice ``weight[:, j]`` or, for the
        last convolution, the readout's columns of channel ``j``.

    Returns
    -------
    list over convolutions ``l`` of lists over output channels ``j`` of int arrays: the flat
    indices (in ``parameters_to_vector(model.parameters())``) of ``weight[j]``
    (``C_in · k_h · k_w`` entries, row-major), of ``bias[j]`` when there is one, and
    (``outgoing``) of the reading weights.
    """
    offsets, groups = _param_offsets(model), []
    convs = _convs(model)
    for l, conv in enumerate(convs):
        w0, n = offsets[id(conv.weight)], conv.weight[0].numel()
        b0 = offsets[id(conv.bias)] if conv.bias is not None else None
        nxt = convs[l + 1].weight if l + 1 < len(convs) else model.out.weight
        n_rows = nxt.shape[0]
        per = nxt[0].numel() // conv.out_channels        # reading weights per row and channel
        o0 = offsets[id(nxt)]
        groups.append([np.concatenate([
            w0 + j * n + np.arange(n), [b0 + j] if b0 is not None else [],
            (o0 + (np.arange(n_rows)[:, None] * nxt[0].numel() + j * per
                   + np.arange(per)[None, :]).ravel()) if outgoing else []]).astype(np.int64)
            for j in range(conv.out_channels)])
    return groups


def _conv_like(conv: nn.Conv2d, c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, bias=conv.bias is not None,
                     padding_mode=conv.padding_mode)


@torch.no_grad()
def shrink_cnn(model: nn.Module, keep) -> nn.Module:
    """A physically smaller copy of a CNN holding only the ``keep`` output channels of
    each convolution.

    ``keep``: one index array per convolution of ``model.layers``. Convolution ``l``
    keeps ``weight[keep[l]][:, keep[l-1]]`` and ``bias[keep[l]]``; the readout ``out``
    keeps the columns of the last convolution's kept channels (its input is the channel-
    major flattening ``(C, H, W)``). Everything else (activation, input shape, forward)
    is a deep copy of ``model``; on inputs where a dropped channel's activation is 0
    (ReLU with a zeroed filter and bias) the outputs equal the full model's.
    """
    convs = _convs(model)
    if len(keep) != len(convs):
        raise ValueError(f"need a keep list per convolution ({len(convs)}), got {len(keep)}")
    idx = [torch.as_tensor(np.asarray(k), dtype=torch.long) for k in keep]
    for k, c in zip(idx, convs):
        if k.ndim != 1 or not len(k) or int(k.min()) < 0 or int(k.max()) >= c.out_channels \
                or len(torch.unique(k)) != len(k):
            raise ValueError(f"keep indices must be distinct in [0, {c.out_channels}), got {k.tolist()}")
    small = copy.deepcopy(model)
    for l, conv in enumerate(convs):
        w = conv.weight[idx[l]]
        if l > 0:
            w = w[:, idx[l - 1]]
        new = _conv_like(conv, w.shape[1], w.shape[0])
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias[idx[l]])
        small.layers[l] = new
    out, c_last = model.out, convs[-1].out_channels
    spatial = out.in_features // c_last
    if spatial * c_last != out.in_features:
        raise ValueError(f"out.in_features={out.in_features} is not a multiple of {c_last} channels")
    w = out.weight.reshape(out.out_features, c_last, spatial)[:, idx[-1]].reshape(out.out_features, -1)
    new = nn.Linear(w.shape[1], out.out_features, bias=out.bias is not None)
    new.weight.copy_(w)
    if out.bias is not None:
        new.bias.copy_(out.bias)
    small.out = new
    return small
