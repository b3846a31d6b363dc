"""Typed schema of a run's configuration. Method hyper-parameters live next to each method, not here.

Each section states its rules beside its fields (:func:`pckd.params.hp`); loading and overrides are in
:mod:`pckd.config.load`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pckd.errors import UserError
from pckd.params import Choice, Settings, hp


class Schedule(Choice):
    """Learning-rate schedule (``train.schedule``)."""

    multistep = "multistep"
    cosine = "cosine"


class Precision(Choice):
    """Numeric precision of the forward passes (``train.precision``)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # CUDA only: float16 autocast with a gradient scaler


class OptimizerChoice(Choice):
    """The optimizer and its update rule (``train.optimizer``)."""

    sgd = "sgd"
    dot = "dot"  # DOT (ICCV 2023): separate momenta for the task and the distillation gradients


class OnNonFinite(Choice):
    """What a non-finite loss does (``train.on_nonfinite``)."""

    stop = "stop"
    skip_step = "skip_step"


class DatasetName(Choice):
    """Where the images come from (``data.name``)."""

    cifar100 = "cifar100"
    cifar10 = "cifar10"
    stl10 = "stl10"
    tinyimagenet = "tinyimagenet"
    imagefolder = "imagefolder"
    digits = "digits"


class TransformPreset(Choice):
    """The train/test transforms of ImageFolder data (``data.transforms``)."""

    auto = "auto"  # cifar up to 64 pixels, imagenet above
    imagenet = "imagenet"  # RandomResizedCrop + flip; resize 256/224 + centre crop
    cifar = "cifar"  # resize + padded random crop (4) + flip; resize + centre crop


@dataclass
class ModelConfig(Settings):
    """A network: a zoo/torchvision architecture name and optionally weights to load."""

    arch: str = hp("resnet8x4", doc="architecture: a zoo name, torchvision.<name> or timm.<name> ('pckd models')")
    checkpoint: str | None = hp(None, doc="weights file; RepDistiller/mdistiller/state_dict/bare/pckd formats")
    weights: str | None = hp(None, doc="published weights of a torchvision.*/timm.* model: DEFAULT, IMAGENET1K_V1, ...")
    reset_classifier: bool = hp(False, doc="load the backbone of the weights/checkpoint, train a new classifier")
    trust_checkpoint: bool = hp(False, doc="allow full unpickling of a checkpoint you trust (runs code in the file!)")
    strict: bool = hp(True, doc="every key must match when loading the checkpoint")


@dataclass
class DataConfig(Settings):
    """Where the images come from and how much of them to use."""

    name: DatasetName = hp(DatasetName.cifar100, doc="the dataset")
    root: str = hp("./data", doc="folder holding cifar-100-python/ (or the pickles), stl10_binary/, "
                               "tiny-imagenet-200/, or train/ and val/ for imagefolder")
    num_classes: int | None = hp(None, gt=0, doc="derived from the data when unset; checked against it when set")
    classes: int | None = hp(None, gt=0, doc="keep only the first N classes (quick runs)")
    train_limit: int | None = hp(None, gt=0, doc="keep only the first N training images (after `classes`)")
    test_limit: int | None = hp(None, gt=0, doc="keep only the first N test images (after `classes`)")
    download: bool = hp(False, doc="CIFAR and STL-10: fetch through torchvision when the files are missing (needs "
                                   "internet; torchvision has no TinyImageNet download)")
    resize: int | None = hp(None, gt=0, doc="in-memory datasets: resize the images once at load to N x N "
                                            "(antialiased bilinear), e.g. 32 for STL-10/TinyImageNet on the CIFAR zoo")
    image_size: int = hp(224, gt=0, doc="imagefolder only: training crop / evaluation size")
    transforms: TransformPreset = hp(TransformPreset.auto, doc="imagefolder only: auto | imagenet | cifar")
    num_workers: int | None = hp(None, ge=0, doc="imagefolder only: loader processes; unset: this process's share of the CPUs (at most 8)")
    skip_corrupt: bool = hp(False, doc="imagefolder only: skip unreadable images (counted) instead of stopping")
    verify_images: bool = hp(True, doc="imagefolder only: open every image's header before training, so a bad file "
                                       "stops the run before anything is written; false skips the check (huge "
                                       "folders on slow disks): bad files are then found when read")
    on_device: bool = hp(True, doc="in-memory datasets: keep the uint8 images on the training device")


@dataclass
class TrainConfig(Settings):
    """Optimisation, schedule, precision and bookkeeping of the one training loop."""

    epochs: int = hp(240, gt=0)
    batch_size: int = hp(64, gt=0, doc="global batch (split evenly across ranks under torchrun)")
    eval_batch_size: int = hp(256, gt=0)
    lr: float = hp(0.05, gt=0, doc="initial learning rate, e.g. train.lr=0.05")
    momentum: float = hp(0.9, ge=0)
    weight_decay: float = hp(5e-4, ge=0)
    nesterov: bool = hp(False)
    optimizer: OptimizerChoice = hp(OptimizerChoice.sgd, doc="sgd | dot (task momentum - dot_delta, distillation momentum + dot_delta)")
    dot_delta: float = hp(0.075, ge=0, doc="train.optimizer=dot: the momentum gap delta (mdistiller DOT.DELTA)")
    schedule: Schedule = hp(Schedule.multistep)
    milestones: list[int] = hp(factory=lambda: [150, 180, 210], ge=0, doc="epochs after which lr *= lr_decay")
    lr_decay: float = hp(0.1, gt=0)
    warmup_epochs: int = hp(0, ge=0)
    backbone_lr_scale: float = hp(1.0, ge=0, doc="fine-tuning: the student's backbone trains at lr x this")
    freeze_backbone_epochs: int = hp(0, ge=0, doc="fine-tuning: train only the classifier (and heads) this many epochs")
    seed: int = hp(0, ge=0, lt=2**32)
    device: str = hp("auto", doc="auto | cpu | cuda | cuda:N | mps")
    deterministic: bool = hp(False)
    precision: Precision = hp(Precision.fp32, doc="fp32 | bf16 | fp16 (CUDA, with a gradient scaler); losses in float32")
    channels_last: bool = hp(False)
    compile: bool = hp(False, doc="torch.compile the student's forward")
    teacher_fold_bn: bool = hp(True, doc="fold the frozen teacher's BatchNorms into its convolutions")
    teacher_channels_last: bool | None = hp(None, doc="teacher in channels_last; unset: on for CPU, else = channels_last")
    sync_bn: bool = hp(True, doc="under torchrun: BatchNorm statistics over the global batch (as in one process)")
    log_interval: int = hp(50, gt=0, doc="steps between host reads of the device-side metrics")
    on_nonfinite: OnNonFinite = hp(OnNonFinite.stop)
    eval_teacher: bool = hp(True, doc="evaluate the teacher on the test set before training the student")
    checkpoint_every: int = hp(1, gt=0, doc="epochs between `last` checkpoints")
    progress: bool = hp(True, doc="progress bar")

    def check(self, prefix: str) -> None:
        device = self.device
        if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise UserError(f"config key '{prefix}.device'='{device}' is not one of auto, cpu, cuda, cuda:N, mps")


@dataclass
class RunConfig(Settings):
    """The root of every config file."""

    method: str = hp("ce", doc="the method ('pckd methods' lists them)")
    teacher: ModelConfig = hp(factory=lambda: ModelConfig(arch="resnet32x4"))
    student: ModelConfig = hp(factory=ModelConfig)
    data: DataConfig = hp(factory=DataConfig)
    train: TrainConfig = hp(factory=TrainConfig)
    output_dir: str = hp("runs/${method}-${student.arch}", doc="the run folder")
    resume: bool = hp(False, doc="continue the run in output_dir from its last good checkpoint")
    overwrite: bool = hp(False, doc="replace a different run already in output_dir")
    # The method's own section (`kd.*`, `pckd.*`, ...) is added at load time from the method registry,
    # as a field named after the method whose type is the method's hyper-parameter dataclass.

    def check(self, prefix: str) -> None:
        if self.resume and self.overwrite:
            raise UserError("config keys 'resume' and 'overwrite' are both true; choose one")


for _cls, _section in ((ModelConfig, ""), (DataConfig, "data"), (TrainConfig, "train")):
    _cls.section = _section
