"""Typed schema of a run's configuration. Method hyper-parameters live next to each method, not here.

Loading, overrides and validation are in :mod:`pckd.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelConfig:
    """A network: a zoo/torchvision architecture name and optionally weights to load."""

    arch: str = "resnet8x4"
    checkpoint: Optional[str] = None  # path; RepDistiller/mdistiller/state_dict/bare/pckd formats
    trust_checkpoint: bool = False  # allow full unpickling of a checkpoint you trust (runs code in the file!)
    strict: bool = True  # every key must match when loading the checkpoint


@dataclass
class DataConfig:
    """Where the images come from and how much of them to use."""

    name: str = "cifar100"  # cifar100 | cifar10 | imagefolder | digits
    root: str = "./data"  # folder holding cifar-100-python/ (or the pickles), or train/ and val/ for imagefolder
    num_classes: Optional[int] = None  # derived from the data when unset; checked against it when set
    classes: Optional[int] = None  # keep only the first N classes (quick runs)
    train_limit: Optional[int] = None  # keep only the first N training images (after `classes`)
    test_limit: Optional[int] = None  # keep only the first N test images (after `classes`)
    download: bool = False  # CIFAR only: fetch through torchvision when the files are missing (needs internet)
    image_size: int = 224  # imagefolder only: training crop / evaluation size
    num_workers: int = 4  # imagefolder only: loader processes
    skip_corrupt: bool = False  # imagefolder only: skip unreadable images (counted) instead of stopping
    on_device: bool = True  # in-memory datasets: keep the uint8 images on the training device


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision and bookkeeping of the one training loop."""

    epochs: int = 240
    batch_size: int = 64  # global batch (split evenly across ranks under torchrun)
    eval_batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"  # multistep | cosine
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_decay: float = 0.1
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    precision: str = "fp32"  # fp32 | bf16 (autocast; losses in float32)
    channels_last: bool = False
    compile: bool = False  # torch.compile the student's forward
    teacher_fold_bn: bool = True  # fold the frozen teacher's BatchNorms into its convolutions (outputs within 1e-4)
    teacher_channels_last: Optional[bool] = None  # teacher forward in channels_last; unset: on for CPU, else = channels_last
    sync_bn: bool = True  # under torchrun: BatchNorm statistics over the global batch (as in one process)
    log_interval: int = 50  # steps between host reads of the device-side metrics
    on_nonfinite: str = "stop"  # stop | skip_step
    eval_teacher: bool = True  # evaluate the teacher on the test set before training the student
    checkpoint_every: int = 1  # epochs between `last` checkpoints
    progress: bool = True  # progress bar


@dataclass
class RunConfig:
    """The root of every config file."""

    method: str = "ce"
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet32x4"))
    student: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/${method}-${student.arch}"
    resume: bool = False  # continue the run in output_dir from its last good checkpoint
    overwrite: bool = False  # replace a different run already in output_dir
    # The method's own section (`kd.*`, `pckd.*`, ...) is added at load time from the method registry,
    # as a field named after the method whose type is the method's hyper-parameter dataclass.
