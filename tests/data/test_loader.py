"""In-memory loader: recomputable epoch order, resume from a step, rank sharding, evaluation blocks."""

from __future__ import annotations

import pytest
import torch

from pckd.data.augment import BatchAugment
from pckd.data.loader import InMemoryLoader, epoch_permutation
from pckd.errors import UserError

N = 103


def _data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    # Pixel (0,0,0) stores the dataset index (mod 256) so each batch can be checked against its index.
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    return images, torch.arange(n) % 7


def _loader(shuffle: bool = True, batch_size: int = 10, **kwargs) -> InMemoryLoader:
    images, labels = _data()
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    return InMemoryLoader(images, labels, batch_size, BatchAugment((0.5,) * 3, (0.5,) * 3), shuffle, seed=3, **kwargs)


def _indices(batches) -> list[torch.Tensor]:
    return [b.index.clone() for b in batches]


def test_epoch_order_is_the_seeded_permutation_and_batches_are_consistent():
    loader = _loader()
    loader.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 11 and [b.size for b in batches][-2:] == [10, 3]
    order = torch.cat([b.index for b in batches])
    assert torch.equal(order, epoch_permutation(N, 3, 2))
    assert torch.equal(order, torch.randperm(N, generator=torch.Generator().manual_seed(3 * 1000003 + 2)))
    for b in batches:
        assert torch.equal(b.images[:, 0, 0, 0].long(), b.index % 256) and torch.equal(b.labels, b.index % 7)
        assert b.images.dtype == torch.uint8 and b.augment is loader.augment
    loader.set_epoch(2)
    assert torch.equal(torch.cat(_indices(loader)), order)  # recomputable
    loader.set_epoch(3)
    assert not torch.equal(torch.cat(_indices(loader)), order)  # differs across epochs


def test_iterating_leaves_the_global_rng_alone():
    loader = _loader()
    state = torch.get_rng_state()
    for epoch in range(3):
        loader.set_epoch(epoch)
        list(loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_resume_from_a_step_yields_exactly_the_tail():
    loader = _loader()
    loader.set_epoch(5)
    full = _indices(loader)
    tail = _indices(loader.iter_from(4))
    assert len(tail) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(tail, full[4:]))
    loader.set_epoch(5, start_step=9)
    assert [t.tolist() for t in _indices(loader)] == [t.tolist() for t in full[9:]]


def test_drop_last():
    loader = _loader(drop_last=True)
    assert len(loader) == 10 and all(b.size == 10 for b in loader)


def test_two_ranks_cover_each_global_batch():
    single = _loader()
    ranks = [_loader(rank=r, world_size=2) for r in range(2)]
    for loader in [single, *ranks]:
        loader.set_epoch(1)
    global_batches = _indices(single)
    per_rank = [_indices(loader) for loader in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(global_batches)
    for step, batch in enumerate(global_batches):
        assert torch.equal(torch.cat([per_rank[0][step], per_rank[1][step]]), batch)
    assert [per_rank[0][0].numel(), per_rank[0][-1].numel(), per_rank[1][-1].numel()] == [5, 2, 1]
    assert ranks[0].local_size + ranks[1].local_size == N and ranks[0].dataset_size == N


def test_partial_batch_smaller_than_world_is_dropped():
    ranks = [_loader(rank=r, world_size=4, batch_size=20) for r in range(4)]  # last global batch has 3 images
    assert all(len(loader) == 5 for loader in ranks)
    covered = torch.cat([i for loader in ranks for i in _indices(loader)])
    assert covered.numel() == 100 and covered.unique().numel() == 100


def test_global_batch_must_split_evenly():
    with pytest.raises(UserError, match=r"train.batch_size=10 is not divisible by the 3 processes .* multiple of 3"):
        _loader(rank=0, world_size=3)


def test_evaluation_shards_contiguous_blocks():
    ranks = [_loader(shuffle=False, batch_size=20, rank=r, world_size=2) for r in range(2)]
    blocks = [torch.cat(_indices(loader)) for loader in ranks]
    assert torch.equal(blocks[0], torch.arange(0, 52)) and torch.equal(blocks[1], torch.arange(52, N))
    assert all(b.size <= 10 for b in ranks[0]) and ranks[1].dataset_size == N
    single = _loader(shuffle=False, batch_size=20)
    single.set_epoch(4)
    assert torch.equal(torch.cat(_indices(single)), torch.arange(N))  # order independent of the epoch


def test_host_images_are_delivered_to_the_device():
    images, labels = _data()
    loader = InMemoryLoader(images, labels, 16, BatchAugment((0.5,) * 3, (0.5,) * 3), True, device="cpu",
                            rank=0, world_size=1)
    batch = next(iter(loader))
    assert batch.images.device.type == "cpu" and batch.size == 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loader_on_device_and_from_host():
    images, labels = _data()
    aug = BatchAugment((0.5,) * 3, (0.5,) * 3)
    on_device = InMemoryLoader(images.cuda(), labels.cuda(), 16, aug, True, seed=3, rank=0, world_size=1)
    from_host = InMemoryLoader(images, labels, 16, aug, True, seed=3, device="cuda", rank=0, world_size=1)
    for a, b in zip(on_device, from_host):
        assert a.images.is_cuda and b.images.is_cuda and b.index.is_cuda
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images)
