"""Give any classifier (torchvision, timm, a user's own) the FeatureModel view without model surgery.

The adapter runs the wrapped model unchanged and reads features through hooks: a forward pre-hook on the
final nn.Linear captures its input (``pooled``) and forward hooks on named modules capture stage outputs.
It shares the wrapped model's parameter, buffer and submodule tables instead of holding it as a child, so
``state_dict()`` keys, ``named_parameters()`` names and checkpoint loading (also when the adapter sits inside
a larger module) are exactly those of the wrapped model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from pckd.errors import UserError
from pckd.models.interface import FeatureModel, FeatureOutput

# Per-module capture slots live in the module's own __dict__, so copies of a model (deepcopy for EMA
# teachers) capture into their own slots instead of into the original adapter's.
_OUT_SLOT = "_pckd_captured_output"
_IN_SLOT = "_pckd_captured_input"


def _capture_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    slot = module.__dict__.get(_OUT_SLOT)
    if slot is not None:  # None outside forward_features: plain forward() keeps nothing alive
        slot.append(output)


def _capture_input(module: nn.Module, args: tuple[Any, ...]) -> None:
    slot = module.__dict__.get(_IN_SLOT)
    if slot is not None:
        slot.append(args[0])


def _as_logits(output: Any) -> Tensor:
    """The logits inside a model's output (tensor, Inception/GoogLeNet namedtuple, dict or tuple)."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def find_classifier(model: nn.Module) -> str:
    """Dotted name of the last nn.Linear registered in ``model`` ('' when the model itself is one)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise UserError(
            f"{type(model).__name__} has no nn.Linear classifier: pass classifier='<module name>' of its final "
            "nn.Linear, or use a model whose head is a Linear layer"
        )
    return names[-1]


def default_stage_names(model: nn.Module) -> list[str]:
    """Stage modules (stem first) for common model families; [] when no convention is known.

    timm models declare theirs in ``feature_info``; torchvision ResNets/ResNeXts/Wide-ResNets use the stem
    ReLU and layer1..layer4; RegNets their stem and trunk blocks; models with a ``features`` trunk
    (VGG, MobileNet, EfficientNet, DenseNet, ConvNeXt) give its final feature map.
    """
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, (list, tuple)) and all(isinstance(i, Mapping) and "module" in i for i in feature_info):
        return [str(info["module"]) for info in feature_info]
    children = dict(model.named_children())
    if all(f"layer{i}" in children for i in range(1, 5)) and "relu" in children:
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    if "stem" in children and "trunk_output" in children:
        return ["stem"] + [f"trunk_output.{name}" for name, _ in children["trunk_output"].named_children()]
    if isinstance(children.get("features"), nn.Module):
        return ["features"]
    return []


class FeatureAdapter(nn.Module):
    """A FeatureModel view of ``model``; ``adapter(x)`` returns the same logits as ``model(x)``.

    Do not assign new submodules to the adapter: its submodule table is the wrapped model's.
    """

    def __init__(self, model: nn.Module, classifier: str, stage_names: list[str]) -> None:
        super().__init__()
        object.__setattr__(self, "_wrapped", model)  # not a child: that would add a 'model.' key prefix
        # Share the tables that define parameters, buffers and children, and with them the state-dict keys.
        self._parameters = model._parameters
        self._buffers = model._buffers
        self._non_persistent_buffers_set = model._non_persistent_buffers_set
        self._modules = model._modules
        self.training = model.training
        self.classifier_name = classifier
        self.stage_names = list(stage_names)
        self._hook_handles = []
        layer = self._module(classifier)
        if not isinstance(layer, nn.Linear):
            raise UserError(
                f"classifier '{classifier}' of {type(model).__name__} is a {type(layer).__name__}, not an nn.Linear: "
                "name the final nn.Linear layer"
            )
        self._hook_handles.append(layer.register_forward_pre_hook(_capture_input))
        for name in self.stage_names:
            self._hook_handles.append(self._module(name).register_forward_hook(_capture_output))

    @property
    def wrapped(self) -> nn.Module:
        """The model being adapted (same parameters, same object)."""
        return self._wrapped

    def _module(self, name: str) -> nn.Module:
        try:
            return self._wrapped.get_submodule(name)
        except AttributeError:
            top = ", ".join(n for n, _ in self._wrapped.named_children())
            raise UserError(
                f"module '{name}' not found in {type(self._wrapped).__name__}: use a dotted name from "
                f"model.named_modules() (top level: {top})"
            ) from None

    def forward(self, x: Tensor) -> Tensor:
        return _as_logits(self._wrapped(x))

    def forward_features(self, x: Tensor) -> FeatureOutput:
        """Run the wrapped model once and return its stage outputs, classifier input and logits."""
        head = self._module(self.classifier_name)
        stages = [self._module(name) for name in self.stage_names]
        for module in stages:
            module.__dict__[_OUT_SLOT] = []
        head.__dict__[_IN_SLOT] = []
        try:
            logits = _as_logits(self._wrapped(x))
            captured = []
            for name, module in zip(self.stage_names, stages):
                outputs = module.__dict__[_OUT_SLOT]
                if not outputs:
                    raise RuntimeError(f"stage module '{name}' did not run in the forward pass")
                captured.append(outputs[-1])  # a module called several times reports its last call
            inputs = head.__dict__[_IN_SLOT]
            if not inputs:
                raise RuntimeError(f"classifier '{self.classifier_name}' did not run in the forward pass")
            return FeatureOutput(captured, inputs[-1], logits)
        finally:
            for module in stages:
                module.__dict__[_OUT_SLOT] = None
            head.__dict__[_IN_SLOT] = None

    @property
    def classifier_layer(self) -> nn.Linear:
        """The final nn.Linear of the wrapped model."""
        layer = self._module(self.classifier_name)
        assert isinstance(layer, nn.Linear)
        return layer

    @property
    def penultimate_dim(self) -> int:
        """Input width of the classifier."""
        return self.classifier_layer.in_features

    def train(self, mode: bool = True) -> FeatureAdapter:
        # The wrapped root is not a child, so its own flag (read by e.g. Inception's aux head) is set here.
        self._wrapped.training = mode
        return super().train(mode)

    def remove_hooks(self) -> None:
        """Detach the capture hooks from the wrapped model (forward_features stops working)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            wrapped = self.__dict__.get("_wrapped")
            if wrapped is None:
                raise
            return getattr(wrapped, name)  # plain attributes of the wrapped model (num_classes, ...)

    def extra_repr(self) -> str:
        return f"wraps={type(self._wrapped).__name__}, classifier={self.classifier_name!r}, stages={self.stage_names}"


def as_feature_model(
    model: nn.Module, classifier: str | None = None, stage_names: list[str] | None = None
) -> nn.Module:
    """Return ``model`` with the FeatureModel interface (forward_features, classifier_layer, penultimate_dim).

    Models that already implement it are returned unchanged unless ``classifier``/``stage_names`` are given.
    ``classifier`` names the final nn.Linear (default: the last one registered); ``stage_names`` the modules
    whose outputs form ``stages`` (default: :func:`default_stage_names`).
    """
    if classifier is None and stage_names is None and isinstance(model, FeatureModel):
        return model
    if isinstance(model, FeatureAdapter):
        model = model.wrapped
    name = classifier if classifier is not None else find_classifier(model)
    stages = stage_names if stage_names is not None else default_stage_names(model)
    return FeatureAdapter(model, name, stages)


__all__ = ["FeatureAdapter", "as_feature_model", "default_stage_names", "find_classifier"]
