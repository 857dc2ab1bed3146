"""Expert placements, replica dealing and row packing of the parallel layer (one process)."""

import numpy as np
import pytest
import torch

from artifact.core.errors import ArtifactError
from artifact.gpu.parallel.layer import SlotTables, deal, pack, unpack
from artifact.gpu.parallel.placement import Placement, eplb, linear, parse_placements
from artifact.routing.measures import max_mean

SKEWED = np.array([900.0, 50, 40, 30, 400, 20, 10, 550])


def rank_loads(placement: Placement, loads) -> np.ndarray:
    """Per-rank loads when every expert's load splits evenly over its replicas."""
    share = np.asarray(loads, dtype=np.float64) / placement.replica_counts
    return np.array([sum(share[e] for e in slots) for slots in placement.slots])


@pytest.mark.parametrize(("ranks", "expected"), [(2, "0,1,2,3|4,5,6,7"), (4, "0,1|2,3|4,5|6,7")])
def test_linear_is_vllms_contiguous_blocks(ranks, expected):
    assert linear(8, ranks).describe() == expected


def test_linear_gives_the_first_ranks_the_remainder():
    assert linear(8, 3).describe() == "0,1,2|3,4,5|6,7"
    with pytest.raises(ArtifactError, match="leaves a rank empty"):
        linear(2, 4)


@pytest.mark.parametrize(
    ("ranks", "redundant", "expected"),
    [(2, 0, 1.0), (2, 2, 1.03), (4, 0, 1.82), (4, 4, 1.12), (8, 8, 1.2533)],
)
def test_eplb_fills_every_slot(ranks, redundant, expected):
    placement = eplb(SKEWED, ranks, redundant)
    assert {len(s) for s in placement.slots} == {(8 + redundant) // ranks}
    assert placement.num_slots == 8 + redundant
    assert max_mean(rank_loads(placement, SKEWED)) == pytest.approx(expected, abs=1e-4)
    # linear: 1.02 at R=2 (the greedy is no optimum: eplb:2 lands above it), 1.9 at R=4


def test_eplb_replicates_the_hottest_expert_per_replica():
    placement = eplb(SKEWED, 2, 2)
    # 900 -> two replicas of 450; then 550 is the highest per replica -> two of 275.
    assert placement.replica_counts.tolist() == [2, 1, 1, 1, 1, 1, 1, 2]
    assert placement.name == "eplb:2"


def test_eplb_without_redundancy_only_moves_experts():
    placement = eplb(SKEWED, 2, 0)
    assert placement.replica_counts.tolist() == [1] * 8
    # Greedy packing: 900 | 550, then 400 -> the lighter rank, and so on.
    assert placement.describe() == "0,1,2,6|3,4,5,7"
    assert rank_loads(placement, SKEWED).tolist() == [1000.0, 1000.0]


def test_placement_tables_index_physical_slots_rank_major():
    placement = Placement("p", ((0, 1, 2), (2, 3, 0)), 4)
    t = placement.tables
    assert t["rank"].tolist() == [0, 0, 0, 1, 1, 1]
    assert t["local"].tolist() == [0, 1, 2, 0, 1, 2]
    assert t["count"].tolist() == [2, 1, 2, 1]
    assert t["replica"].tolist() == [[0, 5], [1, -1], [2, 3], [4, -1]]


def test_placement_must_hold_every_expert():
    with pytest.raises(ArtifactError, match="no rank holds expert 3"):
        Placement("p", ((0, 1), (2,)), 4)


def test_parse_placements():
    specs = parse_placements("linear, eplb, eplb:0", 8, 4)
    assert [s.name for s in specs] == ["linear", "eplb:4", "eplb:0"]
    assert specs[1].build(SKEWED, 4).num_slots == 12
    with pytest.raises(ArtifactError, match="divide evenly"):
        parse_placements("eplb:3", 8, 2)
    with pytest.raises(ArtifactError, match="unknown placement"):
        parse_placements("random", 8, 2)
    with pytest.raises(ArtifactError, match="repeat"):
        parse_placements("eplb,eplb:2", 8, 2)


def test_deal_splits_each_expert_evenly_over_its_replicas():
    placement = eplb(SKEWED, 2, 2)
    tables = SlotTables.of(placement, "cpu")
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.choice(8, size=(101, 2), p=SKEWED / SKEWED.sum()))
    for source in range(2):
        phys = deal(ids, tables, source)
        # every assignment lands on a replica of its own expert
        expert_of_slot = np.array([e for slots in placement.slots for e in slots])
        assert (expert_of_slot[phys.numpy()] == ids.numpy()).all()
        per_slot = np.bincount(phys.numpy().ravel(), minlength=placement.num_slots)
        for e in range(8):
            counts = per_slot[placement.tables["replica"][e][: placement.replica_counts[e]]]
            assert counts.max() - counts.min() <= 1


def test_deal_without_replicas_is_the_expert_map():
    placement = linear(8, 4)
    ids = torch.tensor([[0, 7], [3, 4], [5, 1]])
    phys = deal(ids, SlotTables.of(placement, "cpu"), source=3)
    assert torch.equal(phys, ids)  # linear: physical slot e holds expert e


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_pack_unpack_round_trip(dtype):
    x = torch.randn(5, 12).to(dtype)
    ids = torch.tensor([[0, -1], [3, 2], [-1, 1], [4, 4], [7, 0]])
    weights = torch.rand(5, 2)
    rows = pack(x, ids, weights)
    assert rows.dtype == torch.uint8 and rows.shape == (5, 12 * x.element_size() + 16)
    x2, ids2, weights2 = unpack(rows, x, 2)
    assert torch.equal(x2, x) and torch.equal(ids2, ids) and torch.equal(weights2, weights)
    assert [t.shape[0] for t in unpack(rows[:0], x, 2)] == [0, 0, 0]
