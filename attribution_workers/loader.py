"""Load a model to explain from a typed spec: a TorchScript file, or a factory plus a weights file.

Model conventions the loader understands (all but ``forward`` optional):

- ``forward(x) -> logits [B, num_classes]`` for inputs ``[B, *input_shape]``;
- ``features(x)`` and ``head(a)`` with ``head(features(x)) == forward(x)``: Grad-CAM
  attributes to the output of ``features``. TorchScript modules take no hooks, so the
  loader wraps such a model in :class:`GradCamView`, whose ``nn.Identity`` carries them;
- ``baseline() -> Tensor[input_shape]``: the attribution baseline (zeros otherwise);
- ``embed(x)``: the penultimate embedding, used by the drift monitors, not here.

Nothing is unpickled freely: ``torch.jit.load`` for TorchScript, and for a factory's
state dict ``safetensors`` or ``torch.load(weights_only=True)``, whose restricted
unpickler admits tensors and plain containers only.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import math
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from attribution_workers.errors import AttributionError

_FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_CAM_LAYER_NAME = "cam"


class ModelSpec(BaseModel):
    """Where a model comes from and what it takes; exactly one of ``torchscript`` and ``factory``."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    torchscript: Path | None = None
    """A ``torch.jit.save`` file."""
    factory: str | None = None
    """``"package.module:callable"`` that returns an ``nn.Module`` when called without arguments."""
    weights: Path | None = None
    """The factory model's state dict: ``*.safetensors``, else a ``torch.save`` file of tensors only."""
    input_shape: tuple[PositiveInt, ...] = Field(min_length=1)
    """Shape of one input, without the batch dimension."""
    num_classes: int = Field(ge=2)
    """Width of the logits."""
    gradcam_layer: str | None = None
    """Dotted name of the factory model's submodule to hook for Grad-CAM (overrides ``features``/``head``)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.torchscript is None) == (self.factory is None):
            raise ValueError("give exactly one of 'torchscript' and 'factory'")
        if self.factory is not None and self.weights is None:
            raise ValueError("'factory' needs 'weights' (a .safetensors or torch.save state dict)")
        if self.factory is not None and not _FACTORY_PATTERN.match(self.factory):
            raise ValueError(f"'factory' must look like 'package.module:callable', got {self.factory!r}")
        if self.torchscript is not None and (self.weights is not None or self.gradcam_layer is not None):
            raise ValueError("'weights' and 'gradcam_layer' apply to 'factory' models only")
        return self


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LoadedModel:
    """A model ready to explain: eval mode, frozen parameters, on ``device``."""

    module: nn.Module
    """Returns logits; for a ``features``/``head`` model this is its :class:`GradCamView`."""
    device: torch.device
    input_shape: tuple[int, ...]
    num_classes: int
    baseline: torch.Tensor
    """``[*input_shape]`` on ``device``: the input that stands for "no information"."""
    gradcam_layer_name: str | None
    """Dotted name in ``module`` of the layer Grad-CAM hooks, or None when Grad-CAM is unavailable."""
    digest: str = ""
    """Identity of the loaded model: SHA-256 (first 16 hex digits) of its file and, for a factory model, the
    factory's name. A sanity figure measured on another model must not judge this one's maps."""

    @property
    def gradcam_layer(self) -> nn.Module | None:
        """The layer Grad-CAM hooks, or None."""
        return None if self.gradcam_layer_name is None else self.module.get_submodule(self.gradcam_layer_name)

    def randomised(self, *, seed: int) -> LoadedModel:
        """A copy with every parameter re-drawn at random (model-randomisation check); this model is untouched.

        Kernels and matrices are drawn like PyTorch's default initialisation (Kaiming
        uniform, ``a=sqrt(5)``); vectors uniformly in ``±1/sqrt(length)``. Buffers are kept.
        """
        module = copy.deepcopy(self.module)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in module.parameters():
                fresh = torch.empty(parameter.shape, dtype=parameter.dtype)
                if parameter.dim() >= 2:
                    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
                else:
                    bound = 1 / math.sqrt(max(parameter.numel(), 1))
                    fresh.uniform_(-bound, bound, generator=generator)
                parameter.copy_(fresh)
        return dataclasses.replace(self, module=_frozen(module))


class _Staged(Protocol):
    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def head(self, activations: torch.Tensor) -> torch.Tensor: ...


class GradCamView(nn.Module):
    """``model.features`` → ``cam`` (an ``nn.Identity`` that takes hooks) → ``model.head``; same logits as ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cam = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        staged = cast(_Staged, self.model)
        return staged.head(self.cam(staged.features(x)))


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested``, else CUDA when available, else the CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AttributionError(f"device {device} was asked for but CUDA is not available; use 'cpu'")
    return device


def load_model(spec: ModelSpec, *, device: str | torch.device | None = None) -> LoadedModel:
    """Load, freeze and check the model ``spec`` names (one forward pass on its baseline)."""
    target = resolve_device(device)
    module = _load_torchscript(spec.torchscript, target) if spec.torchscript else _load_factory(spec, target)
    baseline = _baseline(module, spec.input_shape, target)
    layer_name = spec.gradcam_layer
    if layer_name is None and _is_staged(module):
        module, layer_name = GradCamView(module), _CAM_LAYER_NAME
    elif layer_name is not None:
        _check_layer(module, layer_name)
    _check_logits(_frozen(module), baseline, spec.num_classes)
    return LoadedModel(
        digest=model_digest(spec),
        module=module,
        device=target,
        input_shape=tuple(spec.input_shape),
        num_classes=spec.num_classes,
        baseline=baseline,
        gradcam_layer_name=layer_name,
    )


def model_digest(spec: ModelSpec) -> str:
    """SHA-256 of the model's file (TorchScript, or the factory's weights and the factory's name), 16 hex digits."""
    digest = hashlib.sha256()
    if spec.factory is not None:
        digest.update(spec.factory.encode() + b"\0")
    path = cast(Path, spec.torchscript or spec.weights)
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    try:
        module: nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except (OSError, ValueError, RuntimeError) as error:
        raise AttributionError(f"{path} cannot be loaded as TorchScript: {_first_line(error)}") from error
    return module


def _load_factory(spec: ModelSpec, device: torch.device) -> nn.Module:
    factory, weights = cast(str, spec.factory), cast(Path, spec.weights)
    module = _import_callable(factory)()
    if not isinstance(module, nn.Module):
        raise AttributionError(f"factory {factory!r} returned a {type(module).__name__}, not an nn.Module")
    try:
        module.load_state_dict(_read_state_dict(weights), strict=True)
    except RuntimeError as error:
        raise AttributionError(f"weights {weights} do not fit {factory!r}: {error}") from error
    return module.to(device)


def _import_callable(reference: str) -> Callable[[], object]:
    module_name, _, qualified_name = reference.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in qualified_name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise AttributionError(f"factory {reference!r} cannot be imported: {error}") from error
    if not callable(target):
        raise AttributionError(f"factory {reference!r} is a {type(target).__name__}, not a callable")
    return cast(Callable[[], object], target)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, SafetensorError) as error:
        raise AttributionError(f"weights {path} are not a readable state dict: {_first_line(error)}") from error
    if not isinstance(state, Mapping) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state.items()
    ):
        raise AttributionError(f"weights {path} hold a {type(state).__name__}, not a mapping of names to tensors")
    return dict(state)


def _frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no parameter gradients (attribution needs input gradients only)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _is_staged(module: nn.Module) -> bool:
    return callable(getattr(module, "features", None)) and callable(getattr(module, "head", None))


def _check_layer(module: nn.Module, name: str) -> None:
    try:
        module.get_submodule(name)
    except AttributeError as error:
        raise AttributionError(f"gradcam_layer {name!r} is not a submodule of the model: {error}") from error


def _baseline(module: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    make = getattr(module, "baseline", None)
    if not callable(make):
        return torch.zeros(input_shape, device=device)
    with torch.no_grad():
        baseline = make()
    if not isinstance(baseline, torch.Tensor) or tuple(baseline.shape) != input_shape:
        shape = tuple(baseline.shape) if isinstance(baseline, torch.Tensor) else type(baseline).__name__
        raise AttributionError(f"the model's baseline() gave {shape}, expected a tensor of shape {input_shape}")
    return baseline.detach().to(device=device, dtype=torch.float32)


def _check_logits(module: nn.Module, baseline: torch.Tensor, num_classes: int) -> None:
    try:
        with torch.no_grad():
            logits = module(baseline.unsqueeze(0))
    except RuntimeError as error:
        raise AttributionError(
            f"the model does not run on one input of shape {tuple(baseline.shape)}: {_first_line(error)}"
        ) from error
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AttributionError(f"the model returned {shape} for one input, expected logits of shape (1, {num_classes})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
