"""nasdeploy: DARTS search → retrain → ONNX export → ONNX Runtime profile.

The API functions carry the names of the stages (and CLI commands) and live in
``nasdeploy.stages``; the implementation packages are named so that no verb
shadows a module (``nasdeploy.strategies``, ``nasdeploy.training``,
``nasdeploy.deploy``).
"""

from .checkpoint import load_network
from .config import RunConfig, load_config
from .data import Dataset, DataSpec, load_dataset
from .errors import NasdeployError
from .space.genotype import GENOTYPES, Genotype
from .space.mixed_op import MixedOp
from .space.network import Network
from .space.search_network import SearchNetwork
from .stages import export, pipeline, profile, resolve_config, search, train
from .version import __version__

__all__ = [
    "GENOTYPES",
    "DataSpec",
    "Dataset",
    "Genotype",
    "MixedOp",
    "NasdeployError",
    "Network",
    "RunConfig",
    "SearchNetwork",
    "__version__",
    "export",
    "load_config",
    "load_dataset",
    "load_network",
    "pipeline",
    "profile",
    "resolve_config",
    "search",
    "train",
]
