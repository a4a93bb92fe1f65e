"""Blending several stores with weights.

Global samples come in blocks of BLOCK. In every block, store d supplies c_d samples
(c = weights x BLOCK, rounded by largest remainder), spread evenly: its k-th sample of the
block sits at "time" (k + 1/2) / c_d, and the block is all stores' samples sorted by
time (ties: lower store index first). So any prefix of the global order holds each store
within one sample (per block) of its share, the order is a pure function of the
weights, and each store's own samples follow its seeded sample index.

A mixture schedule is several such blends one after another, each over a range of global
samples (phases). A store's samples continue across a phase change where the previous
phase left them, so the order is still a pure function of (schedule, global index) and a
run resumed at any sample, before, at or after a change, reads what an uninterrupted run
reads.
"""

from __future__ import annotations

import bisect

import numpy as np

from modtrain.data.read.dataset import TrainSequences, fingerprint
from modtrain.errors import ModtrainError

BLOCK = 1 << 16


def block_counts(weights: list[float], block: int = BLOCK) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise ModtrainError(f"data.weights {list(weights)} must be positive numbers")
    exact = w / w.sum() * block
    counts = np.floor(exact).astype(np.int64)
    rest = block - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    if np.any(counts == 0):
        raise ModtrainError(
            f"data.weights {list(weights)}: a weight below 1/{block} of the total gives its "
            "store no samples; raise it or drop the store"
        )
    return counts


class BlendSchedule:
    """Global sample g -> (store d, that store's sample index)."""

    def __init__(self, weights: list[float], block: int = BLOCK) -> None:
        self.block = block
        self.counts = block_counts(weights, block)
        ids: np.ndarray = np.repeat(np.arange(len(self.counts)), self.counts)
        ranks = np.concatenate([np.arange(c) for c in self.counts])
        times = (ranks + 0.5) / self.counts[ids]
        order = np.lexsort((ids, times))
        self.store = ids[order].astype(np.int32)
        self.rank = ranks[order].astype(np.int64)

    def locate(self, g: int) -> tuple[int, int]:
        b, j = divmod(int(g), self.block)
        d = int(self.store[j])
        return d, b * int(self.counts[d]) + int(self.rank[j])

    def taken(self, n: int) -> np.ndarray:
        """How many samples of each store the first n global samples use."""
        b, rest = divmod(int(n), self.block)
        return b * self.counts + np.bincount(self.store[:rest], minlength=len(self.counts))


Phases = list[tuple[int | None, list[float]]]  # (end in global samples or None: open, weights)


class PhasedSchedule:
    """Global sample g -> (store d, that store's sample index) under weights that change:
    phase k covers samples [ends[k-1], ends[k]); the last phase is open-ended."""

    def __init__(self, phases: Phases, block: int = BLOCK) -> None:
        if not phases or phases[-1][0] is not None or any(e is None for e, _ in phases[:-1]):
            raise ModtrainError("data.weights schedule: every phase but the last needs 'until' "
                                "and the last none; it holds the weights to the end")
        ends = [e for e, _ in phases[:-1] if e is not None]  # all of them (checked above)
        if any(b <= a for a, b in zip([0, *ends], ends)):
            raise ModtrainError(f"data.weights schedule: 'until' steps {ends} must increase "
                                "and be positive")
        self.ends = ends
        self.starts = [0, *ends]
        self.phases = [BlendSchedule(w, block) for _, w in phases]
        before: list[np.ndarray] = [np.zeros(len(self.phases[0].counts), dtype=np.int64)]
        for k in range(1, len(self.phases)):
            span = self.starts[k] - self.starts[k - 1]
            before.append(before[-1] + self.phases[k - 1].taken(span))
        self.before = before

    def _phase(self, g: int) -> int:
        return bisect.bisect_right(self.ends, g)

    def locate(self, g: int) -> tuple[int, int]:
        k = self._phase(int(g))
        d, i = self.phases[k].locate(int(g) - self.starts[k])
        return d, int(self.before[k][d]) + i

    def taken(self, n: int) -> np.ndarray:
        k = self._phase(int(n)) if n > 0 else 0
        return self.before[k] + self.phases[k].taken(int(n) - self.starts[k])


class BlendedSequences:
    """Training samples drawn from several stores in proportion to weights (or a schedule
    of weights: `phases`, whose ends are in global samples)."""

    def __init__(self, parts: list[TrainSequences], weights: list[float],
                 phases: Phases | None = None) -> None:
        for w in [weights] + [w for _, w in phases or []]:
            if len(parts) != len(w):
                raise ModtrainError(
                    f"data.weights has {len(w)} entries for {len(parts)} stores; "
                    "give one weight per store"
                )
        self.parts = parts
        self.weights = [float(w) for w in weights]
        self.schedule: BlendSchedule | PhasedSchedule = (
            PhasedSchedule(phases) if phases else BlendSchedule(self.weights))
        identity: list[object] = [p.fingerprint for p in parts]
        identity += self.weights
        identity += [[e, list(w)] for e, w in phases] if phases else []
        self.fingerprint = fingerprint(identity)

    def __getitem__(self, global_index: int) -> np.ndarray:
        d, i = self.schedule.locate(global_index)
        return self.parts[d][i]

    def epoch_of(self, consumed: int) -> int:
        """Passes completed over the store that has been repeated the most."""
        taken = self.schedule.taken(consumed)
        return int(max(t // p.windows_per_epoch for t, p in zip(taken, self.parts)))

    def proportions(self, n: int) -> np.ndarray:
        return self.schedule.taken(n) / max(n, 1)
