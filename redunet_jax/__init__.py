"""redunet_jax: white-box ReduNets built in closed form, in JAX.

Every layer is one step of gradient ascent on the rate-reduction objective
(MCR²), computed by forward propagation; the result can be fine-tuned by
back-propagation of the same objective.
"""

from redunet_jax._circulant import (
    CirculantLayer,
    apply_circulant_layer,
    build_circulant_layer,
)
from redunet_jax._classify import (
    evaluate,
    fit_nearest_subspace,
    nearest_subspace,
    predict_nearest_subspace,
    shift_invariant_features,
)
from redunet_jax._estimator import ReduNetClassifier
from redunet_jax._fourier import bin_weights, fourier_norm, from_fourier, to_fourier
from redunet_jax._lift import lift, lifting_filters, polar_resample
from redunet_jax._network import (
    ReduNet,
    construct,
    normalize,
    predict,
    predict_proba,
    rates_per_layer,
    transform,
)
from redunet_jax._rates import Rates, rate_reduction
from redunet_jax._spectral_rates import shift_invariant_rate_reduction
from redunet_jax._vector import VectorLayer, apply_vector_layer, build_vector_layer
from redunet_jax.data import (
    Dataset,
    gaussian_mixture,
    load_dataset,
    read_idx,
    sinusoids,
)
from redunet_jax.io import load, save

__version__ = "0.1.0"

__all__ = [
    "CirculantLayer",
    "Dataset",
    "Rates",
    "ReduNet",
    "ReduNetClassifier",
    "VectorLayer",
    "__version__",
    "apply_circulant_layer",
    "apply_vector_layer",
    "bin_weights",
    "build_circulant_layer",
    "build_vector_layer",
    "construct",
    "evaluate",
    "fit_nearest_subspace",
    "fourier_norm",
    "from_fourier",
    "gaussian_mixture",
    "lift",
    "lifting_filters",
    "load",
    "load_dataset",
    "nearest_subspace",
    "normalize",
    "polar_resample",
    "predict",
    "predict_nearest_subspace",
    "predict_proba",
    "rate_reduction",
    "rates_per_layer",
    "read_idx",
    "shift_invariant_features",
    "sinusoids",
    "save",
    "shift_invariant_rate_reduction",
    "to_fourier",
    "transform",
]
