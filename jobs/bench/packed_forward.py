"""Packed forward+backward of one training step on a (M, B, 1) batch of the demo MLP
(depth 2, width 32, tanh, mse): the hand-written baddbmm forward and backward into one
flat gradient buffer (pipeline.training.packed.PackedMLP, what packed tasks run), the
same forward with autograd's backward, and torch.func (stack_module_state +
functional_call + vmap) with autograd.

Command::

    .venv/bin/python jobs/bench/packed_forward.py [--members 32] [--width 32] [--reps 300]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.training.models import build_model  # noqa: E402
from pipeline.training.packed import PackedMLP, member_losses, stack_models  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=300)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = [build_model("mlp", 1, 1, a.depth, a.width, "tanh") for _ in range(a.members)]
    x = torch.randn(a.members, a.batch, 1)
    y = torch.randn(a.members, a.batch, 1)

    shapes = [(n, tuple(t.shape)) for n, t in models[0].named_parameters()]
    packed = PackedMLP(stack_models(models), shapes, a.depth, "tanh")
    ones = torch.ones(a.members)

    def step_hand():
        keep = []
        _, dpred = member_losses(["mse"] * a.members, packed.forward(x, keep), y, ones)
        packed.backward(dpred, keep)

    auto = PackedMLP(stack_models(models).requires_grad_(True), shapes, a.depth, "tanh")

    def step_bmm():
        auto.flat.grad = None
        F.mse_loss(auto(x), y, reduction="none").flatten(1).mean(1).sum().backward()

    from torch.func import functional_call, stack_module_state

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    vm = torch.vmap(one)

    def step_vmap():
        for t in params.values():
            t.grad = None
        F.mse_loss(vm(params, buffers, x), y, reduction="none").flatten(1).mean(1).sum().backward()

    out = {}
    for name, fn in (("hand", step_hand), ("bmm", step_bmm), ("vmap", step_vmap)):
        for _ in range(20):
            fn()
        t = time.perf_counter()
        for _ in range(a.reps):
            fn()
        out[name] = (time.perf_counter() - t) / a.reps * 1e3
    print(f"members {a.members} width {a.width} depth {a.depth} batch {a.batch}: "
          f"hand-written {out['hand']:.3f} ms/step, baddbmm+autograd {out['bmm']:.3f} ms/step, "
          f"vmap+autograd {out['vmap']:.3f} ms/step; autograd/hand {out['bmm'] / out['hand']:.2f}, "
          f"vmap/hand {out['vmap'] / out['hand']:.2f}")


if __name__ == "__main__":
    main()
