"""The perturbation library: registry plus one module per family.

    from visionstress.perturbations import get_perturbation, list_perturbations
    out = get_perturbation("motion_blur")(batch, severity=3, seed=0)
"""

if __name__ != "visionstress.perturbations":  # the folder of the installed package, imported from a checkout's root
    raise ImportError(f"import visionstress.perturbations, not {__name__}: under a second name its registry and its "
                      "cached numba kernels would be a second, diverging copy")

from .registry import (
    ALL_TARGETS,
    KINDS,
    BatchPerturbation,
    GeometricPerturbation,
    Perturbation,
    PhotometricPerturbation,
    PrepareContext,
    get_perturbation,
    list_perturbations,
    register_perturbation,
    sample_key,
    unregister_perturbation,
)
from ._warp import BOX_METHODS, Warp
from .levels import Field, Level, LevelError
# Each family module registers its perturbations on import.
from . import occlusion, scale, rotation, lighting, blur, camera, weather, digital  # noqa: E402,F401
from . import background, cue  # noqa: E402,F401

from . import adversarial  # noqa: E402,F401  (the patches: fitted on the model in the prepare phase)
IMAGENET_C = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
"""The 15 benchmark corruptions of ImageNet-C (Hendrycks & Dietterich, 2019), in the paper's order."""

IMAGENET_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The four held-out ImageNet-C corruptions."""

__all__ = [
    "ALL_TARGETS", "BOX_METHODS", "KINDS", "IMAGENET_C", "IMAGENET_C_EXTRA", "BatchPerturbation", "Field", "GeometricPerturbation",
    "Level", "LevelError", "Perturbation", "PhotometricPerturbation", "PrepareContext", "Warp", "get_perturbation",
    "list_perturbations", "register_perturbation", "sample_key", "unregister_perturbation",
]
