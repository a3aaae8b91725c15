"""The bad-initialization policy inside a sweep's task (sweep key ``on_bad_init``).

A variant with ``on_bad_init: {action, max_restarts, fallback_init, after}`` trains with a
:class:`BadInitMonitor` among its callbacks: it keeps the first ``after`` (``K``)
snapshots in memory (``K × P`` float32) and, at the ``K``-th, runs
:func:`pipeline.apps.badinit.detect` on them (``rule: v2``: ``detect_v2``; ``rule: v3``:
``detect_v3`` with the training losses of those epochs, at the end of the ``K``-th
snapshot's epoch). Then:

- ``continue``: training goes on; the verdict is recorded with the run;
- ``stop``: training stops at the end of that epoch; the run's status is ``bad_init``;
- ``restart``: as ``stop``, and the task trains a new attempt of the same variant under
  the linked id ``<run id>-r1`` (then ``-r2``, ... up to ``max_restarts``) with a fresh
  initialization seed (:func:`init_seed`) and, when given, the ``fallback_init`` scheme.
  The same data, batch order and optimizer; the attempt is watched by the same rule.

Every attempt is a run of its own in the store (and so in MLflow), linked by attributes:
``variant_run_id`` (the variant's id, attempt 0's), ``attempt`` (k), ``restart_of``
(the previous attempt's id) and, on an attempt that was restarted, ``restarted_as``
(the next one's), written with its final status. The stored config of attempt ``k`` is
the variant with ``attempt: k`` (and the fallback init): it rebuilds that attempt.
A re-run follows the links (:func:`variant_done`, :func:`attempt_ids`): a finished chain
is skipped whole, an interrupted one resumes at its first unfinished attempt.
"""

from __future__ import annotations

import logging

import numpy as np

from ..apps.snapshots import SnapshotWindow
from ..storage.store import FINISHED

log = logging.getLogger(__name__)

BAD_INIT = "bad_init"           # the stored status of an attempt the policy ended
MAX_ATTEMPTS = 10               # attempts a chain can hold (max_restarts <= 9)


def attempt_id(root: str, k: int) -> str:
    """Run id of attempt ``k`` of the variant whose run id is ``root`` (``k = 0``: ``root``)."""
    return root if k == 0 else f"{root}-r{k}"


def init_seed(variant) -> int:
    """Seed of the initialization draw: the variant's torch seed for attempt 0, a seed
    spawned from it (``SeedSequence(torch_seed, spawn_key=(attempt,))``) for a restart."""
    if not getattr(variant, "attempt", 0):
        return int(variant.torch_seed)
    ss = np.random.SeedSequence(int(variant.torch_seed), spawn_key=(int(variant.attempt),))
    return int(ss.generate_state(1)[0])


def task_chance(task, loss) -> float | None:
    """The chance level of a task under a loss (:func:`pipeline.apps.badinit_loss.chance_level`:
    log C for cross-entropy, the targets' variance for MSE; None for other losses)."""
    from ..apps.badinit_loss import chance_level

    name = loss if isinstance(loss, str) else None
    if task.kind == "classification":
        return chance_level(name, n_classes=int(task.out_dim))
    return chance_level(name, targets=task.y_train.detach().cpu().numpy())


def variant_chance(variant) -> float | None:
    """:func:`task_chance` of the variant's task (built with its seed, as its training does)."""
    from .tasks import build_task

    task = build_task(variant.task.name, seed=variant.torch_seed, **variant.task.model_dump(exclude={"name"}))
    return task_chance(task, variant.loss)


def attempt_variant(variant, k: int):
    """The variant trained as attempt ``k`` (``attempt: k``; the fallback init if set)."""
    update = {"attempt": k}
    policy = variant.on_bad_init
    if k > 0 and policy is not None and policy.fallback_init:
        update["init"] = policy.fallback_init
    return variant.model_copy(update=update)


# ----------------------------------------------------------------------- chains in a store
def attempt_ids(store, root: str) -> list[str]:
    """Ids of the stored attempts of a variant, in order: ``root`` and the attempts its
    ``restarted_as`` links lead to (only those present in the store)."""
    ids: list[str] = []
    rid = root
    while rid and len(ids) < MAX_ATTEMPTS and store.status(rid) is not None:
        ids.append(rid)
        rid = store.open_run(rid).attrs.get("restarted_as")
    return ids


def variant_done(store, root: str) -> bool:
    """Whether a re-run has nothing left to train for this variant: its run is finished
    and, if the policy restarted it, so is every attempt down the chain."""
    rid = root
    for _ in range(MAX_ATTEMPTS):
        status = store.status(rid)
        if status not in FINISHED:
            return False
        nxt = store.open_run(rid).attrs.get("restarted_as") if status == BAD_INIT else None
        if not nxt:
            return True
        rid = nxt
    return True


# ----------------------------------------------------------------------- in the task
class BadInitMonitor:
    """Training callback: the verdict of :func:`pipeline.apps.badinit.detect` (``rule`` v1),
    :func:`~pipeline.apps.badinit.detect_v2` (v2: needs ``layout``, and ``lr`` to
    normalise the motion) or :func:`~pipeline.apps.badinit_loss.detect_v3` (v3: also the
    training losses of the epochs the snapshots span, read from the loop's history at the
    end of the ``after``-th snapshot's epoch, and the task's ``chance`` level) on the first
    ``after`` snapshots; asks to stop when it is bad and ``action`` is not ``continue``.

    Attributes
    ----------
    verdict : dict or None
        :func:`~pipeline.apps.badinit.detect`'s result, once ``after`` snapshots were seen.
    at : dict or None
        ``{"snapshot": K - 1, "epoch": e, "step": s}``: where the verdict was reached.
    """

    def __init__(self, after: int, groups, action: str, rule: str = "v1", layout=None, lr=None,
                 chance: float | None = None):
        self.after, self.groups, self.action = int(after), groups, action
        self.rule, self.layout, self.lr, self.chance = rule, layout, lr, chance
        if rule in ("v2", "v3") and layout is None:
            raise ValueError(f"rule {rule} needs the layout")
        self.rows = SnapshotWindow(after)
        self.verdict: dict | None = None
        self.at: dict | None = None
        self._held = None        # v3: the K snapshots, judged at the end of their epoch (with its loss)

    def on_snapshot(self, flat, epoch: int, step: int) -> None:
        if self.verdict is not None or self._held is not None:
            return
        self.rows.append(flat)
        if self.rows.full:
            from ..apps.badinit import detect, detect_v2

            self.at = {"snapshot": self.after - 1, "epoch": int(epoch), "step": int(step)}
            if self.rule == "v3":     # the losses of the epochs the K snapshots span come after
                self._held = self.rows.array().copy()
                self.rows.clear()
                return
            if self.rule == "v2":
                self.verdict = detect_v2(self.rows.array(), self.layout, self.lr, snapshots=self.after)
            else:
                self.verdict = detect(self.rows.array(), self.groups, snapshots=self.after)
            self.rows.clear()
            self._log()

    def _log(self) -> None:
        log.info("bad-init verdict after %d snapshots: %s", self.after,
                 "bad (" + ", ".join(self.verdict["bad_init_reasons"]) + ")" if self.verdict["bad_init"]
                 else "good")

    def on_epoch_end(self, epoch: int, history) -> bool:
        if self._held is not None and self.verdict is None:
            from ..apps.badinit_loss import detect_v3

            losses = list((history or {}).get("train_loss") or [])[:max(self.at["epoch"], 0)]
            self.verdict = detect_v3(self._held, self.layout, self.lr, train_loss=losses, chance=self.chance,
                                     snapshots=self.after)
            self._held = None
            self._log()
        return bool(self.verdict and self.verdict["bad_init"] and self.action != "continue")

    def judge(self, result, next_id: str | None) -> tuple[str, dict]:
        """Final status and attributes of the attempt: ``bad_init`` when the verdict is
        bad and the action stops (``restarted_as``: ``next_id`` when one follows)."""
        attrs: dict = {"bad_init_verdict": self.verdict, "bad_init_at": self.at}
        bad = bool(self.verdict and self.verdict["bad_init"])
        if not bad or self.action == "continue" or result.status != "complete":
            attrs["bad_init_action"] = "continued" if bad and result.status == "complete" else "none"
            return result.status, attrs
        attrs["bad_init_action"] = "restarted" if next_id else "stopped"
        if next_id:
            attrs["restarted_as"] = next_id
        return BAD_INIT, attrs
