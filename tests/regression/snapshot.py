"""The regression snapshot of every method: named losses and gradients of one training step, in float64.

Each case builds a run the way ``pckd train`` does (config -> data -> models -> distiller), takes the first
training batch of the embedded digits data, moves everything to float64 and runs two steps (epoch 1 and a later
epoch, so init stages, warm-ups and preview thresholds move), recording every named loss term and, for every
trainable parameter, the gradient's sum, sum of squares and its dot product with a fixed random vector.

Regenerate (only when a change of the numbers is intended and explained): ``python -m tests.regression.snapshot``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

SNAPSHOT = Path(__file__).resolve().parents[1] / "fixtures" / "method_regression.json"

# (case name, method, overrides); the method's own defaults unless an override says otherwise.
CASES: list[tuple[str, str, list[str]]] = [
    ("ce", "ce", []),
    ("kd", "kd", []),
    ("pckd", "pckd", []),
    ("pckd-focal", "pckd", ["pckd.preview.mode=focal"]),
    ("pckd-curriculum-on-ce", "pckd", ["pckd.preview.mode=curriculum", "pckd.preview.on_ce=true"]),
    ("pckd-off", "pckd", ["pckd.preview.mode='off'"]),
    ("pckd-released-grad", "pckd", ["pckd.preview.detach=false"]),
    ("pckd-centers", "pckd", ["pckd.ccc=centers"]),
    ("ckd", "ckd", []),
    ("ckd-symmetric", "ckd", ["ckd.symmetric=true"]),
    ("intra_class", "intra_class", []),
    ("dkd", "dkd", ["dkd.warmup=4"]),
    ("ls", "ls", []),
    ("mld", "mld", []),
    ("mld-corrected", "mld", ["mld.corrected=true", "mld.logit_standardize=true"]),
    ("dist", "dist", []),
    ("nkd", "nkd", []),
    ("wttm", "wttm", []),
    ("ctkd", "ctkd", ["ctkd.lambda_loops=2"]),
    ("fitnet", "fitnet", []),
    ("at", "at", []),
    ("sp", "sp", []),
    ("nst", "nst", []),
    ("rkd", "rkd", []),
    ("pkt", "pkt", []),
    ("cc", "cc", []),
    ("vid", "vid", []),
    ("crd", "crd", ["crd.nce_k=16"]),
    ("ickd", "ickd", []),
    ("reviewkd", "reviewkd", []),
    ("ab", "ab", ["ab.init_epochs=1"]),
    ("ft", "ft", ["ft.init_epochs=1"]),
    ("fsp", "fsp", ["fsp.init_epochs=1"]),
    ("sskd", "sskd", ["sskd.init_epochs=1"]),
]
EPOCHS = (1, 2)


class DoubleViews:
    """Wraps an augmenter so every view it returns is float64 (the models run in float64)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            return out.double() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

        return wrapped


def _config(method: str, overrides: list[str], teacher: Path, run_dir: Path) -> Any:
    from pckd.config import load_config

    # teacher keys only for methods that use a teacher (a teacher-less run refuses them)
    teacher_keys = [] if method in ("ce", "intra_class") else ["teacher.arch=resnet20", f"teacher.checkpoint={teacher}"]
    return load_config(None, [
        f"method={method}", "student.arch=resnet8", *teacher_keys,
        "data.name=digits", "data.train_limit=64", "data.test_limit=16", "train.batch_size=16",
        "train.device=cpu", "train.progress=false", "train.eval_teacher=false", "train.seed=3",
        f"output_dir={run_dir}", *overrides])


def _build(cfg: Any) -> Any:
    from pckd.engine.build import build

    return build(cfg)


def compute_case(method: str, overrides: list[str], workdir: Path, dtype: str = "float64") -> dict[str, Any]:
    """Losses and gradient summaries of ``method`` at each epoch of :data:`EPOCHS`, with the models in ``dtype``
    (float64, or float32 for the methods that cast to float32 themselves)."""
    from pckd.data.batch import Batch
    from pckd.models import create_model

    torch.manual_seed(11)
    workdir.mkdir(parents=True, exist_ok=True)
    teacher = workdir / "teacher-resnet20.pt"
    if not teacher.exists():
        torch.save(create_model("resnet20", 10).state_dict(), teacher)
    cfg = _config(method, overrides, teacher, workdir / "run")
    built = _build(cfg)
    distiller = built.distiller.to(getattr(torch, dtype))
    loader = built.data.train
    loader.set_epoch(1)
    raw = next(iter(loader.iter_from(0)))
    batch = Batch(images=raw.images, labels=raw.labels, index=raw.index, augment=DoubleViews(raw.augment) if dtype == "float64" else raw.augment)
    params = [(n, p) for n, p in distiller.named_parameters() if p.requires_grad]
    probe_gen = torch.Generator().manual_seed(5)
    probes = {n: torch.randn(p.shape, generator=probe_gen, dtype=torch.float64) for n, p in params}
    record: dict[str, Any] = {"dtype": dtype}
    for epoch in EPOCHS:
        torch.manual_seed(100 + epoch)
        distiller.train()
        distiller.on_epoch_start(epoch)
        for _, p in params:
            p.grad = None
        out = distiller(batch, epoch)
        out.total.backward()
        grads = {}
        for n, p in params:
            if p.grad is None:
                grads[n] = None
            else:
                g = p.grad.double()
                grads[n] = [float(g.sum()), float((g * g).sum()), float((g * probes[n]).sum())]
        record[str(epoch)] = {
            "losses": {k: float(v.detach()) for k, v in out.losses.items()},
            "logits": [float(out.logits.detach().sum()), float((out.logits.detach() ** 2).sum())],
            "grads": grads,
        }
    return record


def compute_all(workdir: Path) -> dict[str, Any]:
    """Every case of :data:`CASES`, in float64 where the method runs in float64, else in float32."""
    out = {}
    for name, method, overrides in CASES:
        try:
            out[name] = compute_case(method, overrides, workdir / name)
        except RuntimeError as exc:  # a method that casts its inputs to float32 (e.g. CRD's heads)
            print(f"{name}: float64 not supported ({exc}); float32", file=sys.stderr)
            out[name] = compute_case(method, overrides, workdir / name, dtype="float32")
    return out


def main() -> int:
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = compute_all(Path(tmp))
    SNAPSHOT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} ({len(result)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
