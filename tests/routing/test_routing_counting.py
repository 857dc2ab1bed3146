"""Routing counts accumulated on the device (artifact.routing.counting)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from meta_device import HostCopies  # noqa: E402

from artifact.routing.counting import CountedPass, PassCounts, PendingSteps  # noqa: E402
from artifact.routing.format import PHASE_CODE  # noqa: E402

E, K, LAYERS = 8, 2, 4


def reference(calls: list[tuple[int, torch.Tensor, np.ndarray | None]]) -> dict:
    """The capture's former way: boolean-mask indexing and bincount, per call and phase."""
    out: dict = {}
    for layer, ids, mask in calls:
        if ids.shape[0] == 0:
            continue
        flat = ids.reshape(ids.shape[0], -1).long()
        if mask is None:
            parts = {PHASE_CODE["unknown"]: flat}
        else:
            m = torch.from_numpy(mask)
            parts = {PHASE_CODE["prefill"]: flat[m], PHASE_CODE["decode"]: flat[~m]}
        for phase, chosen in parts.items():
            if chosen.shape[0] == 0:
                continue
            counts = torch.bincount(chosen.reshape(-1), minlength=E).numpy()
            n, previous = out.get((layer, phase), (0, 0))
            out[(layer, phase)] = (n + chosen.shape[0], previous + counts)
    return out


def test_counts_equal_the_mask_and_bincount_way_on_random_mixed_batches():
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for step in range(20):
        n = int(rng.integers(1, 40))
        mask = rng.random(n) < rng.choice([0.0, 0.5, 1.0])  # all decode, mixed, all prefill
        calls = []
        for layer in range(LAYERS):
            ids = torch.randint(0, E, (n, K), generator=gen, dtype=torch.int32)
            calls.append((layer, ids, mask))
            if layer % 2:  # a chunked forward: more pieces of unknown phase
                for size in (3, 0, 5):
                    calls.append((layer, torch.randint(0, E, (size, K), generator=gen), None))
        counts = PassCounts(LAYERS, E)
        for layer, ids, m in calls:
            counts.add(layer, ids, m)
        rows = counts.count(step).rows()
        want = reference(calls)
        assert [(r[1], r[2]) for r in rows] == sorted(want)  # a row per (layer, phase) with tokens
        for s, layer, phase, ntok, got in rows:
            assert s == step and ntok == want[(layer, phase)][0]
            np.testing.assert_array_equal(got, want[(layer, phase)][1])


def test_a_pass_without_tokens_writes_no_row_and_copies_nothing():
    counts = PassCounts(LAYERS, E)
    counts.add(0, torch.zeros(0, K, dtype=torch.int64), None)
    with HostCopies() as copies:
        assert counts.count(0).rows() == []
    assert copies.count == 0


def test_counting_on_a_device_never_waits_for_it_and_copies_once_per_pass():
    """On `meta` every host sync raises (the former bincount and mask indexing did); a layer
    launches nothing on the device (views only); the pass's counting is a fixed handful of
    operations and one copy to the host, whatever the number of layers and phases."""
    mask = np.array([True, False, True, True, False])
    ids = [torch.empty(5, K, dtype=torch.int32, device="meta") for _ in range(LAYERS)]
    with HostCopies() as copies:
        counts = PassCounts(LAYERS, E)
        for layer in range(LAYERS):
            counts.add(layer, ids[layer], mask)
            counts.add(layer, ids[layer][:2], None)
        assert copies.count == 0 and copies.device_ops == []
        rows = counts.count(0).rows()
    assert copies.count == 1 and len(copies.device_ops) <= 6, copies.device_ops
    assert [(layer, phase, n) for _, layer, phase, n, _ in rows[:3]] == [
        (0, 0, 3),
        (0, 1, 2),
        (0, 2, 2),
    ]
    with pytest.raises(NotImplementedError):  # what the former way did on a device
        torch.bincount(torch.empty(10, dtype=torch.int64, device="meta"))


class CopyUnderWay:
    """Stands for the CUDA event `count` records after its copy to the host (no GPU here)."""

    def __init__(self) -> None:
        self.landed = False
        self.waited = 0

    def query(self) -> bool:
        return self.landed

    def synchronize(self) -> None:
        self.waited += 1
        self.landed = True


def counted(step: int, event: CopyUnderWay | None) -> CountedPass:
    counts = np.full((LAYERS, 3, E), step)
    return CountedPass(step, [((0, PHASE_CODE["decode"]), 4)], counts, event)


def test_pending_steps_leave_in_step_order_and_only_once_their_copy_has_landed():
    first, second = CopyUnderWay(), CopyUnderWay()
    pending = PendingSteps()
    for step, event in enumerate([first, None, second]):
        pending.push(counted(step, event))
    assert list(pending.ready()) == []  # step 1 is on the host, but step 0 is not yet
    first.landed = True
    written = [rows[0][0] for rows in pending.ready()]
    assert written == [0, 1] and second.waited == 0  # nothing waited on step 2
    (rows,) = list(pending.drain())  # the capture stops: waits for the last copy
    assert second.waited == 1
    step, layer, phase, n, counts = rows[0]
    assert (step, layer, phase, n) == (2, 0, PHASE_CODE["decode"], 4)
    assert counts.tolist() == [2] * E
    assert list(pending.drain()) == []
