"""Run-time shims that let the installed detectron2 work on a modern PyTorch / numpy / Pillow stack.

Every ``dcl`` module that uses detectron2 imports this module first. Each shim is applied only
when the installed packages need it, and the names of those applied are kept in ``APPLIED``
(``dcl train`` records them in ``run.json``). On a real detectron2 build with the libraries it was
written for, nothing is patched.

Shims:

``numpy-aliases``
    detectron2 v0.6 uses ``np.int``, ``np.float``, ``np.object``, ``np.str``, ``np.complex``,
    ``np.bool`` (removed in numpy 1.24; numpy 2 brought back only ``np.bool``). Restored as the
    builtins they always were.
``pillow-constants``
    ``PIL.Image.LINEAR``/``CUBIC``/``ANTIALIAS`` (removed in Pillow 10); detectron2 v0.6 uses
    ``Image.LINEAR`` as a default argument, so this must run before detectron2 is imported.
``pkg_resources``
    ``detectron2.model_zoo`` imports ``pkg_resources``, which setuptools >= 81 no longer ships;
    a minimal stand-in provides the one function it calls, ``resource_filename``.
``detectron2._C``
    detectron2 installed without its C++/CUDA extension (``tools/install_detectron2.py`` builds
    such an install from PyPI's ``pb1-detectron2`` sdist, which has no C++ sources). Mask R-CNN
    training, inference and our evaluation never touch ``_C``; the ops that do (rotated boxes and
    rotated NMS, deformable convolution, detectron2's C++ COCO evaluator) raise
    ``MissingExtensionError`` naming the missing build instead of failing obscurely.

``torch-deprecations``
    fvcore (imported by detectron2 v0.6) calls ``torch.jit.script`` at import, and detectron2's
    anchor generator ``torch.meshgrid`` without ``indexing=``; recent PyTorch warns about each on
    every run (``dcl train --help`` included), which users cannot act on. Those two warnings are
    ignored (dcl itself uses neither function).

Applied on request only:

``cpu-ddp`` (:func:`allow_cpu_ddp`, called by CPU workers of :mod:`dcl.training.launch`)
    detectron2's ``create_ddp_model`` passes ``device_ids=[local rank]``, which
    DistributedDataParallel rejects for a CPU model; for a CPU model it passes none.
"""

from __future__ import annotations

import importlib.util
import sys
import types

__all__ = ["APPLIED", "MissingExtensionError", "allow_cpu_ddp", "has_extension"]

APPLIED: list[str] = []

_BUILD_HINT = (
    "detectron2 is installed without its compiled extension detectron2._C (a pure-Python install, "
    "e.g. from PyPI's pb1-detectron2 sdist), so `{name}` is unavailable. Rotated boxes, "
    "deformable convolution and detectron2's C++ COCO evaluator need it; Mask R-CNN and DCL do "
    "not. To use it, build detectron2 from source with its C++/CUDA sources: "
    "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
)


class MissingExtensionError(RuntimeError):
    """A detectron2 operation needs the compiled extension ``detectron2._C``, which is not built."""


class _MissingExtensionModule(types.ModuleType):
    """Stands in for ``detectron2._C``: importable, but every op raises ``MissingExtensionError``."""

    def __getattr__(self, name: str):
        # Python's import machinery probes dunder attributes (__path__, __spec__, ...) and
        # must get AttributeError for them, or imports that touch this module break.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise MissingExtensionError(_BUILD_HINT.format(name=f"detectron2._C.{name}"))

    # detectron2.utils.collect_env (logged at the start of every training run) asks for these.
    @staticmethod
    def get_compiler_version() -> str:
        return "not built (pure-Python detectron2; dcl.compat stand-in)"

    @staticmethod
    def get_cuda_version() -> str:
        return "not built"

    @staticmethod
    def has_cuda() -> bool:
        return False


def _restore_numpy_aliases() -> None:
    import numpy as np

    missing = {
        name: typ
        for name, typ in (
            ("bool", bool),
            ("int", int),
            ("float", float),
            ("complex", complex),
            ("object", object),
            ("str", str),
        )
        if name not in np.__dict__
    }
    for name, typ in missing.items():
        setattr(np, name, typ)
    if missing:
        APPLIED.append("numpy-aliases")


def _restore_pillow_constants() -> None:
    from PIL import Image

    missing = {
        name: value
        for name, value in (
            ("LINEAR", Image.Resampling.BILINEAR),
            ("CUBIC", Image.Resampling.BICUBIC),
            ("ANTIALIAS", Image.Resampling.LANCZOS),
        )
        if not hasattr(Image, name)
    }
    for name, value in missing.items():
        setattr(Image, name, value)
    if missing:
        APPLIED.append("pillow-constants")


def _provide_pkg_resources() -> None:
    if importlib.util.find_spec("pkg_resources") is not None:
        return
    from importlib.resources import files

    module = types.ModuleType("pkg_resources", "dcl.compat stand-in: resource_filename only")
    module.resource_filename = lambda package, resource: str(files(package).joinpath(resource))
    sys.modules["pkg_resources"] = module
    APPLIED.append("pkg_resources")


def has_extension() -> bool:
    """True when detectron2's compiled extension ``detectron2._C`` is really installed."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not isinstance(module, _MissingExtensionModule)
    return importlib.util.find_spec("detectron2._C") is not None


def _stand_in_for_missing_extension() -> None:
    if importlib.util.find_spec("detectron2") is None or has_extension():
        return
    import torch

    sys.modules["detectron2._C"] = _MissingExtensionModule(
        "detectron2._C", "dcl.compat stand-in for detectron2's missing compiled extension"
    )

    # detectron2.layers.nms calls this op through torch.ops rather than through _C.
    def nms_rotated(boxes, scores, iou_threshold):
        raise MissingExtensionError(_BUILD_HINT.format(name="torch.ops.detectron2.nms_rotated"))

    library = torch.library.Library("detectron2", "DEF")
    library.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms_rotated", nms_rotated, "CompositeExplicitAutograd")
    globals()["_TORCH_LIBRARY"] = library  # the op lives as long as the Library object
    APPLIED.append("detectron2._C")


def allow_cpu_ddp() -> None:
    """Let detectron2's ``DefaultTrainer`` wrap a CPU model in DistributedDataParallel (gloo)."""
    if "cpu-ddp" in APPLIED:
        return
    from detectron2.engine import defaults

    create_ddp_model = defaults.create_ddp_model

    def create_ddp_model_on_any_device(model, **kwargs):
        if "device_ids" not in kwargs and all(p.device.type == "cpu" for p in model.parameters()):
            kwargs["device_ids"] = None
        return create_ddp_model(model, **kwargs)

    defaults.create_ddp_model = create_ddp_model_on_any_device
    APPLIED.append("cpu-ddp")


def _silence_torch_deprecations_in_detectron2() -> None:
    import warnings

    # Both are attributed to torch's own modules (the caller cannot be matched), hence by message.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
    APPLIED.append("torch-deprecations")


def _apply() -> None:
    _silence_torch_deprecations_in_detectron2()
    _restore_numpy_aliases()
    _restore_pillow_constants()
    _provide_pkg_resources()
    _stand_in_for_missing_extension()


_apply()
