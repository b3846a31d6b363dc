"""Published weights for a network: torchvision's weights enums and timm's pretrained tags, and loading a
backbone under a new classifier (fine-tuning a pretrained model on your own classes).

Weights download on first use through the libraries' own caches (torch.hub's ``$TORCH_HOME``, Hugging Face's
for timm) and are read from there afterwards; pckd keeps no copy.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pckd.errors import UserError
from pckd.models.adapter import FeatureAdapter, find_classifier
from pckd.models.registry import TIMM_PREFIX, TORCHVISION_PREFIX


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's final classifier (the layer whose rows are the category centres)."""
    name = model.classifier_name if isinstance(model, FeatureAdapter) else find_classifier(model)
    return [f"{name}.{k}" for k in model.get_submodule(name).state_dict()]


def _torchvision_weights(name: str, weights: str, key: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    try:
        return enum[weights]
    except KeyError:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise UserError(f"{key}={weights!r} is not a weights name of torchvision.{name}; use one of {valid}") from None


def pretrained_state(arch: str, weights: str, key: str) -> tuple[dict[str, Tensor], int, str]:
    """(state dict, number of classes it was trained for, description) of ``arch``'s published ``weights``."""
    if arch.startswith(TORCHVISION_PREFIX):
        w = _torchvision_weights(arch[len(TORCHVISION_PREFIX):], weights, key)
        try:
            state = w.get_state_dict(progress=True, check_hash=True)
        except OSError as exc:  # no network, no cached file
            raise UserError(f"{key}={weights}: the torchvision weights could not be fetched ({exc}); put the file "
                            f"in $TORCH_HOME/hub/checkpoints/ or use a local checkpoint") from None
        return state, len(w.meta.get("categories") or []), f"torchvision {w}"
    if arch.startswith(TIMM_PREFIX):
        import timm

        name = arch[len(TIMM_PREFIX):]
        full = name if weights in ("default", "DEFAULT") else f"{name}.{weights}"
        try:
            model = timm.create_model(full, pretrained=True)
        except (RuntimeError, OSError, ValueError) as exc:
            raise UserError(f"{key}={weights}: timm could not load pretrained '{full}' ({exc})") from None
        return model.state_dict(), int(getattr(model, "num_classes", 0)), f"timm {full}"
    raise UserError(f"{key}={weights}: only torchvision.* and timm.* models have published weights here; for zoo "
                    f"models load a checkpoint file (or a published teacher) with the checkpoint key")


def load_backbone(model: nn.Module, state: dict[str, Tensor], source: str, reset_classifier: bool,
                  classes_of_state: int, num_classes: int, key: str, reset_key: str) -> str:
    """Load ``state`` into ``model``; with ``reset_classifier`` every tensor but the classifier's (which keeps
    its fresh initialisation for ``num_classes``). Returns one line saying what was kept and re-initialised."""
    head = classifier_keys(model)
    if not reset_classifier:
        if classes_of_state and classes_of_state != num_classes:
            raise UserError(f"{key}: {source} has {classes_of_state} classes but the data has {num_classes}; add "
                            f"{reset_key}=true to keep the backbone and train a new classifier")
        model.load_state_dict(state)
        return f"loaded {len(state)} tensors from {source}"
    body = {k: v for k, v in state.items() if k not in head}
    own = model.state_dict()
    missing = sorted(k for k in own if k not in body and k not in head)
    unexpected = sorted(k for k in body if k not in own)
    wrong = sorted(k for k in body if k in own and tuple(own[k].shape) != tuple(body[k].shape))
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[:3]
        raise UserError(f"{key}: {source} does not fit this architecture's backbone (first differing keys: "
                        f"{', '.join(first)}); check the architecture")
    model.load_state_dict(body, strict=False)
    layer = head[0].rsplit(".", 1)[0]
    was = f"{classes_of_state} -> {num_classes}" if classes_of_state else f"new, {num_classes}"
    return (f"kept {len(body)} backbone tensors from {source}; re-initialised the classifier '{layer}' "
            f"({was} classes)")
