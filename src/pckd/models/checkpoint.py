"""Read checkpoint files safely, find the weights inside them and load them into a model.

Files are read with ``torch.load(weights_only=True)``: tensors, plain containers and the few objects published
KD checkpoints hold (``safe_globals.py``), so a file that carries pickled code is refused before anything in it
runs. Only an explicit trust flag unpickles fully.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pckd.errors import UserError
from pckd.models.published.cache import is_zoo
from pckd.models.published.cache import resolve as resolve_zoo
from pckd.models.safe_globals import published_formats

_CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "net")  # pckd/RepDistiller/mdistiller, Lightning, others
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP/DataParallel and torch.compile
# torch names the refused global in two phrasings ("Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y whose
# module x is blocked").
_FORBIDDEN_GLOBAL = re.compile(r"(?:Unsupported (?:global|class):? (?:GLOBAL )?|unsupported GLOBAL )([\w.]+)")
_SHOWN_KEYS = 3


def forbidden_globals(err: BaseException) -> list[str]:
    """The globals a refused ``weights_only`` load names in its error (sorted, unique; empty when none)."""
    return sorted(set(_FORBIDDEN_GLOBAL.findall(str(err))))


def _trust_key(key_name: str) -> str:
    """'teacher.checkpoint' -> 'teacher.trust_checkpoint': the config key that allows full unpickling."""
    section, _, _ = key_name.rpartition(".")
    return f"{section}.trust_checkpoint" if section else "trust_checkpoint"


def _corrupt(path: Path, key_name: str, err: BaseException) -> UserError:
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return UserError(
        f"checkpoint '{path}' ({key_name}) is truncated or corrupt: {detail}; re-download or re-save the file"
    )


def _read_safetensors(path: Path, key_name: str) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"reading '{path}' ({key_name}) needs safetensors: pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError for bad headers and short files
        raise _corrupt(path, key_name, err) from None


def read_checkpoint(path: str | os.PathLike[str], trust: bool = False, key_name: str = "teacher.checkpoint") -> Any:
    """Load a checkpoint file onto the CPU; usually returns a dict.

    ``.safetensors`` files are read with safetensors. Other files go through ``torch.load`` with
    ``weights_only=True`` unless ``trust`` is set; a file that needs arbitrary unpickling is refused with a
    UserError (nothing in it is executed). ``key_name`` is the config key the path came from, for messages.
    ``zoo:NAME`` reads the cached published teacher NAME (``pckd teachers fetch NAME``).
    """
    path = resolve_zoo(path, key_name) if is_zoo(path) else Path(path)
    if not path.exists():
        raise UserError(f"checkpoint '{path}' ({key_name}) not found: check the path")
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' ({key_name}) is not a file: give the path of the checkpoint file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, key_name)
    try:
        with published_formats():  # RepDistiller's Namespace and numpy accuracies load without trust
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        found = forbidden_globals(err)
        if found and not trust:
            raise UserError(
                f"checkpoint '{path}' ({key_name}) contains pickled code/objects ({', '.join(found)}) "
                f"and was NOT loaded or executed; only if you trust this file, set {_trust_key(key_name)}=true "
                "(or re-save it as a plain state dict where it was made)"
            ) from None
        raise _corrupt(path, key_name, err) from None
    except (AttributeError, ModuleNotFoundError) as err:  # trusted full unpickling of a class we lack
        raise UserError(
            f"checkpoint '{path}' ({key_name}) needs code that is not importable here to unpickle: {err}; "
            "re-save it as a plain state dict"
        ) from None
    except PermissionError:
        raise UserError(f"checkpoint '{path}' ({key_name}) cannot be read: permission denied") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, IndexError, KeyError) as err:
        raise _corrupt(path, key_name, err) from None


def _strip_wrapper_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove 'module.' / '_orig_mod.' when every key carries it (also nested, e.g. 'module._orig_mod.')."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The model weights inside a loaded checkpoint, with DDP/compile prefixes stripped.

    Accepts pckd checkpoints (``{'format': 'pckd', 'model': ...}``), RepDistiller/mdistiller files
    (``{'model': ..., 'epoch': ...}``), ``{'state_dict': ...}``, bare state dicts and (trusted) pickled
    nn.Modules. ``source`` names the file in error messages.
    """
    inner: Any = obj
    for _ in range(3):  # containers may nest once or twice ({'model': {'state_dict': ...}})
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
            break
        if not isinstance(inner, Mapping):
            break
        key = next((k for k in _CONTAINER_KEYS if isinstance(inner.get(k), (Mapping, nn.Module))), None)
        if key is None:
            break
        inner = inner[key]
    if isinstance(inner, nn.Module):
        inner = inner.state_dict()
    if not isinstance(inner, Mapping) or not inner:
        raise UserError(
            f"{source}: no model weights found (got {type(obj).__name__}); expected a state dict or a dict with "
            f"one under {', '.join(repr(k) for k in _CONTAINER_KEYS)}"
        )
    tensors = {str(k): v for k, v in inner.items() if isinstance(v, Tensor)}
    if len(tensors) != len(inner):
        others = [str(k) for k, v in inner.items() if not isinstance(v, Tensor)][:_SHOWN_KEYS]
        raise UserError(
            f"{source}: no model weights found; top-level entries {others} are not tensors and none of "
            f"{', '.join(repr(k) for k in _CONTAINER_KEYS)} holds a state dict"
        )
    return _strip_wrapper_prefixes(tensors)


def guess_architecture(state: Mapping[str, Tensor]) -> tuple[str, int] | None:
    """(zoo name, number of classes) of the CIFAR zoo model whose state dict has these keys and shapes."""
    from pckd.models.cifar import CIFAR_MODELS

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name, (_, builder) in CIFAR_MODELS.items():
        with torch.device("meta"):  # building on meta allocates nothing
            model = builder(num_classes=1)
        head = model._classifier_attr  # the one layer whose shape depends on the class count
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if own.keys() != shapes.keys():
            continue
        if all(own[k] == shapes[k] for k in own if k not in (f"{head}.weight", f"{head}.bias")):
            return name, shapes[f"{head}.weight"][0]
    return None


def _first(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _classifier_name(model: nn.Module) -> str | None:
    """State-dict prefix of the model's final classifier (e.g. ``fc``), if the model exposes one."""
    try:
        layer = model.classifier_layer
    except (AttributeError, AssertionError, RuntimeError):
        return None
    return next((name for name, module in model.named_modules() if module is layer and name), None)


def _mismatch_error(
    path: Path, key_name: str, model: nn.Module, state: dict[str, Tensor], own: dict[str, Tensor], strict: bool
) -> UserError | None:
    # Files from before BatchNorm counted batches lack num_batches_tracked; torch fills it in.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if not (missing or unexpected or mismatched):
        return None
    head = _classifier_name(model)
    if head is not None and not (missing or unexpected) and set(mismatched) <= {f"{head}.weight", f"{head}.bias"}:
        file_w, own_w = state.get(f"{head}.weight"), own.get(f"{head}.weight")
        if file_w is not None and own_w is not None and file_w.shape[1:] == own_w.shape[1:]:
            # Only the class count differs: say that in the user's terms rather than as tensor shapes.
            return UserError(
                f"checkpoint '{path}' ({key_name}) has {file_w.shape[0]} classes but the data has {own_w.shape[0]} "
                f"(shape mismatch {head}.weight {list(file_w.shape)} in file vs {list(own_w.shape)} in model); "
                f"use a checkpoint trained on the same {own_w.shape[0]} classes, or set data.classes/data.name "
                f"to the data it was trained on"
            )
    parts = []
    if missing:
        parts.append(f"missing {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected {_first(unexpected)}")
    if mismatched:
        shown = [f"{k} {list(state[k].shape)} in file vs {list(own[k].shape)} in model" for k in mismatched]
        parts.append(f"shape mismatch {_first(shown)}")
    guess = guess_architecture(state)
    if guess is not None:
        hint = f"it looks like a '{guess[0]}' checkpoint with {guess[1]} classes: set the arch and class count to match"
    else:
        hint = "check that the arch and number of classes match the ones the checkpoint was trained with"
    return UserError(
        f"checkpoint '{path}' ({key_name}) does not fit {type(model).__name__}: {'; '.join(parts)}; {hint}"
    )


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    trust: bool = False,
    strict: bool = True,
    key_name: str = "teacher.checkpoint",
) -> nn.Module:
    """Load the weights in checkpoint ``path`` into ``model`` and return the model.

    With ``strict`` every key must match; without it, keys present on one side only are skipped. A shape
    mismatch is always an error (a UserError naming the file, the first offending keys and, when the file
    matches a zoo architecture, that architecture).
    """
    path = Path(path)
    state = extract_state_dict(read_checkpoint(path, trust=trust, key_name=key_name), source=f"'{path}' ({key_name})")
    own = model.state_dict()
    error = _mismatch_error(path, key_name, model, state, own, strict)
    if error is not None:
        raise error
    if not strict:
        state = {k: v for k, v in state.items() if k in own}
    check_values(path, key_name, state, own)
    model.load_state_dict(state, strict=strict)
    return model


def check_values(path: Path, key_name: str, state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> None:
    """UserError naming the file unless every weight can be used as it is: a floating-point entry of the model
    must come as floating point (an integer tensor would be cast silently, e.g. a wrongly exported file), and
    every value must be finite (NaN/inf weights give NaN outputs, which no setting of this run can fix)."""
    cast = [k for k, v in state.items() if k in own and own[k].is_floating_point() and not v.is_floating_point()]
    if cast:
        raise UserError(
            f"checkpoint '{path}' ({key_name}) stores '{cast[0]}' as {state[cast[0]].dtype} where the model has "
            f"{own[cast[0]].dtype} ({len(cast)} tensors in all); weights must be floating point: re-export the file "
            "from the original checkpoint")
    floats = [k for k, v in state.items() if v.is_floating_point()]
    flags = torch.stack([torch.isfinite(state[k]).all() for k in floats]).tolist() if floats else []
    bad = [k for k, finite in zip(floats, flags) if not finite]
    if bad:
        raise UserError(
            f"checkpoint '{path}' ({key_name}) holds NaN or infinite weights in {len(bad)} of {len(floats)} tensors "
            f"(first '{bad[0]}'); it cannot be used: take an earlier checkpoint of that run")


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata in a ``.safetensors`` header (empty for other files or none)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open
    except ImportError:
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError for bad headers and short files
        raise _corrupt(path, "checkpoint", err) from None


__all__ = ["extract_state_dict", "guess_architecture", "load_weights", "read_checkpoint", "safetensors_metadata"]
