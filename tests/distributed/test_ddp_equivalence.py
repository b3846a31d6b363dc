"""DDP on 2 CPU processes (gloo) against one process with the same global batch.

End to end: ``python -m torch.distributed.run --nproc_per_node=2 -m pckd train ...`` on a slice of the shared
CIFAR-100 must log the same per-step losses (within 1e-4 relative) as ``pckd train`` in one process, for `kd`
and `pckd`, and a run stopped after epoch 1 and resumed under DDP must end with the weights of an uninterrupted
DDP run. What makes the two runs comparable: the loader gives each rank its shard of the same seeded
permutation, the augmenter draws the global batch's random crops/flips on every rank and keeps its own rows,
BatchNorm uses global-batch statistics (``train.sync_bn``), PCKD's mean CE and CCC contrast are global, and the
logged metrics are averaged over ranks.

Unit level (float64, so the only differences left are the ones in the maths): GlobalBatchNorm against
BatchNorm on the full batch, and every PCKD loss term's gradient against one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.engine.checkpoint_io import load_checkpoint_file

pytestmark = pytest.mark.slow

REL = 1e-4


# ---- end to end through the command line --------------------------------------------------------------------
def _overrides(shared_data: Path, teacher: Path, out: Path, epochs: int, extra: list[str]) -> list[str]:
    return [
        "student.arch=resnet8", "teacher.arch=resnet8", f"teacher.checkpoint={teacher}", "data.name=cifar100",
        f"data.root={shared_data}", "data.classes=10", "data.train_limit=192", "data.test_limit=100",
        f"train.epochs={epochs}", "train.batch_size=64", "train.eval_batch_size=100", "train.device=cpu",
        "train.progress=false", "train.log_interval=1", "train.eval_teacher=false", "train.lr=0.05",
        f"output_dir={out}", *extra,
    ]


def _train_one_process(method: str, overrides: list[str]) -> None:
    from pckd.config import load_config
    from pckd.engine.trainer import train

    train(load_config(None, [f"method={method}", *overrides]))


def _train_two_ranks(tmp: Path, method: str, overrides: list[str]) -> None:
    config = tmp / f"{method}.yaml"
    config.write_text(f"method: {method}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # --standalone: a private rendezvous on a free port, so parallel test runs do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pckd", "train", str(config), *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _steps(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "step"]


def _assert_same_steps(one: Path, two: Path, terms: list[str]) -> None:
    a_steps, b_steps = _steps(one), _steps(two)
    assert [(r["epoch"], r["step"]) for r in b_steps] == [(r["epoch"], r["step"]) for r in a_steps]  # rank 0 only
    for a, b in zip(a_steps, b_steps):
        for term in [*terms, "loss"]:
            assert b[f"train/{term}"] == pytest.approx(a[f"train/{term}"], rel=REL), (a["epoch"], a["step"], term)
        assert b["train/top1"] == a["train/top1"]  # accuracy counted over both ranks' samples
    assert json.loads((two / "env.json").read_text())["world_size"] == 2


def _weights_gap(one: Path, two: Path) -> float:
    """Largest ||w2 - w1|| / ||w1|| over the student's floating-point tensors (BN statistics included).

    Close, not equal: the ranks sum float32 conv weight-gradients over half batches in another order, BatchNorm
    makes those sums cancel (so their relative rounding error is ~1e-5, not 1e-7), and SGD steps amplify it,
    most in small tensors such as BN biases. The float64 unit test below shows the maths is the same.
    """
    w1, w2 = (load_checkpoint_file(r / "last.pt")["model"] for r in (one, two))
    return max(float((w2[k] - v).norm() / v.norm()) for k, v in w1.items() if v.is_floating_point() and v.norm() > 0)


def test_kd_two_ranks_stopped_and_resumed_match_one_process(shared_data, random_teacher, tmp_path):
    """2 ranks run epoch 1, stop, and resume under DDP for epoch 2; every one of the 6 steps logs the losses
    of one uninterrupted process. A rank that missed rank 0's checkpoint (weights, momentum, RNG state) or
    drew other augmentations after resuming would be far off. Multistep schedule with no milestone reached,
    so the learning rate does not depend on train.epochs."""
    one, two = tmp_path / "one", tmp_path / "two"
    _train_one_process("kd", _overrides(shared_data, random_teacher, one, 2, []))
    _train_two_ranks(tmp_path, "kd", _overrides(shared_data, random_teacher, two, 1, []))
    assert load_checkpoint_file(two / "last.pt")["epoch"] == 1
    _train_two_ranks(tmp_path, "kd", _overrides(shared_data, random_teacher, two, 2, ["resume=true"]))
    _assert_same_steps(one, two, ["ce", "kd"])
    assert [(r["epoch"], r["step"]) for r in _steps(two)] == [(e, s) for e in (1, 2) for s in (1, 2, 3)]
    assert load_checkpoint_file(two / "last.pt")["epoch"] == 2
    assert _weights_gap(one, two) < 1e-3  # see _weights_gap (measured: ~5e-4, in small BN biases)


def test_kd_with_dot_two_ranks_match_one_process(shared_data, random_teacher, tmp_path):
    """KD+DOT (``train.optimizer=dot``: two backward passes a step, two momentum buffers) under DDP: both
    passes' gradients must be averaged over the ranks, or the ranks' weights drift apart and the logged losses
    leave one process's after the first step."""
    one, two = tmp_path / "one", tmp_path / "two"
    dot = ["train.optimizer=dot", "train.dot_delta=0.075"]
    _train_one_process("kd", _overrides(shared_data, random_teacher, one, 2, dot))
    _train_two_ranks(tmp_path, "kd", _overrides(shared_data, random_teacher, two, 2, dot))
    _assert_same_steps(one, two, ["ce", "kd"])
    assert _weights_gap(one, two) < 1e-3
    state = load_checkpoint_file(two / "last.pt")["optimizer"]["state"]
    assert state and all("momentum_kd_buffer" in s for s in state.values())  # DOT's second buffer was resumed-ready


def test_pckd_two_ranks_log_the_losses_of_one_process(shared_data, random_teacher, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _train_one_process("pckd", _overrides(shared_data, random_teacher, one, 1, []))
    _train_two_ranks(tmp_path, "pckd", _overrides(shared_data, random_teacher, two, 1, []))
    _assert_same_steps(one, two, ["ce", "kd", "ccc", "fa", "ca", "hard_fraction", "weight_mean"])
    assert _weights_gap(one, two) < 1e-2  # see _weights_gap (measured: ~2e-3; FA loss ~36 at init: big steps)


# ---- unit level: two gloo ranks in float64 ----------------------------------------------------------------
def _pckd_distiller():
    from pckd.methods.pckd import PCKD, PCKDParams
    from pckd.models import create_model

    torch.manual_seed(0)
    return PCKD(create_model("resnet8", 10), create_model("resnet8", 10), PCKDParams(), DataInfo(num_classes=10)).double()


class _Float64Views:
    """Wraps the real augmenter so the float64 models get float64 views (the draws are unchanged)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def rotated_views(self, images: torch.Tensor, n_rotations: int = 4) -> torch.Tensor:
        return self.inner.rotated_views(images, n_rotations).double()


def _batch(rank: int | None):
    from pckd.data.augment import BatchAugment
    from pckd.data.batch import Batch

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])  # same-class samples on both ranks: CCC positives cross
    augment = BatchAugment((0.5,) * 3, (0.25,) * 3)
    rows = slice(0, 8) if rank is None else slice(4 * rank, 4 * rank + 4)
    if rank is not None:
        augment = augment.for_shard(rows.start, 8)
    return Batch(images[rows], labels[rows], torch.arange(8)[rows], _Float64Views(augment))


def _term_gradients(model, batch, world: int) -> dict[str, torch.Tensor]:
    """Gradient of each PCKD term (averaged over ranks, as DDP would) w.r.t. all trainable parameters."""
    torch.manual_seed(5)  # the same augmentation draws in every process
    losses = model(batch, 1).losses
    params = list(model.parameters())
    grads = {}
    for term in ("ce", "kd", "ccc", "fa", "ca"):  # one forward; the backward passes run in the same order
        parts = torch.autograd.grad(losses[term], params, retain_graph=True, allow_unused=True)
        flat = torch.cat([torch.zeros_like(p).flatten() if g is None else g.flatten() for p, g in zip(params, parts)])
        if world > 1:
            torch.distributed.all_reduce(flat)
        grads[term] = flat / world
    return grads


def _bn_case(rank: int | None):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64, generator=g) * 3 + 1
    dy = torch.randn(8, 3, 5, 5, dtype=torch.float64, generator=g)
    rows = slice(0, 8) if rank is None else slice(4 * rank, 4 * rank + 4)
    return x[rows].clone().requires_grad_(True), dy[rows]


def _bn_result(bn: torch.nn.Module, rank: int | None, world: int) -> dict[str, torch.Tensor]:
    x, dy = _bn_case(rank)
    bn.train()
    y = bn(x)
    # the mean loss over the global batch: each rank's local part scaled as DDP's average would scale it
    (y * dy).sum().mul(float(world)).backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    if world > 1:
        torch.distributed.all_reduce(grads)
    return {"y": y.detach(), "dx": x.grad / world, "dparams": grads / world,
            "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone()}


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from pckd.distributed import GlobalBatchNorm, all_gather_rows, convert_batchnorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        # uneven shards (3 rows on rank 0, 2 on rank 1): every rank's loss uses all 5 gathered rows
        x = (torch.arange(6 - 2 * rank, dtype=torch.float64).view(-1, 2) + 10 * rank).requires_grad_(True)
        gathered, rows = all_gather_rows(x)
        (gathered * torch.arange(1.0, 11.0, dtype=torch.float64).view(5, 2)).sum().backward()
        gather = {"gathered": gathered.detach(), "rows": (rows.start, rows.stop), "grad": x.grad}
        bn = convert_batchnorm(torch.nn.BatchNorm2d(3).double(), torch.device("cpu"))
        assert isinstance(bn, GlobalBatchNorm)
        result = {"bn": _bn_result(bn, rank, world), "gather": gather}
        model = _pckd_distiller()
        convert_batchnorm(model, torch.device("cpu"))
        result["grads"] = _term_gradients(model, _batch(rank), world)
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_gather_and_pckd_gradients_match_one_process_in_float64(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ranks.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got = torch.load(out)

    bn = torch.nn.BatchNorm2d(3).double()
    want = _bn_result(bn, None, 1)
    got_bn = got["bn"]
    torch.testing.assert_close(got_bn["y"], want["y"][:4], rtol=1e-12, atol=1e-12)  # rank 0's rows
    torch.testing.assert_close(got_bn["dx"], want["dx"][:4], rtol=1e-10, atol=1e-12)
    for key in ("dparams", "running_mean", "running_var"):
        torch.testing.assert_close(got_bn[key], want[key], rtol=1e-10, atol=1e-12, msg=key)

    gather = got["gather"]  # rank 0's view of the uneven all-gather
    assert torch.equal(gather["gathered"], torch.tensor([[0.0, 1], [2, 3], [4, 5], [10, 11], [12, 13]],
                                                        dtype=torch.float64))
    assert gather["rows"] == (0, 3)
    torch.testing.assert_close(gather["grad"], 2 * torch.arange(1.0, 7.0, dtype=torch.float64).view(3, 2))

    single = _term_gradients(_pckd_distiller(), _batch(None), 1)
    for term, grad in single.items():
        assert grad.norm() > 0, term
        torch.testing.assert_close(got["grads"][term], grad, rtol=1e-9, atol=1e-12, msg=lambda m, t=term: f"{t}: {m}")


def test_teacher_stays_outside_what_ddp_wraps():
    """Only trainable modules enter DDP: the teacher is not in the distiller's tree, keeps plain BatchNorm
    when the student's is converted, and stays in eval mode."""
    from pckd.distributed import GlobalBatchNorm, convert_batchnorm

    model = _pckd_distiller()
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert not any(k.startswith("teacher") or k.startswith("_teacher") for k in model.state_dict())
    convert_batchnorm(model, torch.device("cpu"))
    assert any(isinstance(m, GlobalBatchNorm) for m in model.student.modules())
    assert isinstance(model.fa_head[1], GlobalBatchNorm)
    assert not any(isinstance(m, GlobalBatchNorm) for m in model.teacher.modules())
    model.train()
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())


@pytest.mark.parametrize("views", ["standard", "rotated"])
def test_each_rank_augments_its_rows_as_one_process_would(views):
    """Ranks draw the crop/flip parameters of the whole global batch and keep their rows, so the two ranks'
    views of every step, concatenated, are the single process's views (the last, partial batch included)."""
    from pckd.data.augment import BatchAugment
    from pckd.data.loader import InMemoryLoader

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(10) % 3

    def all_views(rank: int, world: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        loader = InMemoryLoader(images, labels, 4, BatchAugment((0.5,) * 3, (0.25,) * 3), shuffle=True, seed=3,
                                rank=rank, world_size=world)
        loader.set_epoch(2)
        torch.manual_seed(7)  # every rank's generator is seeded alike, as the trainer seeds them
        make = (lambda b: b.augment.standard(b.images)) if views == "standard" else (
            lambda b: b.augment.rotated_views(b.images, 4))
        return [make(b) for b in loader], torch.get_rng_state()

    (single, s_rng), (rank0, rng0), (rank1, rng1) = all_views(0, 1), all_views(0, 2), all_views(1, 2)
    assert torch.equal(rng0, rng1) and torch.equal(rng0, s_rng)  # generators in step: rank 0's state fits all
    assert len(single) == len(rank0) == len(rank1) == 3  # batches of 4, 4 and 2 images
    for want, a, b in zip(single, rank0, rank1):
        assert torch.equal(torch.cat([a, b]), want)
