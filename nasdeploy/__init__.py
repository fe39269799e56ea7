"""nasdeploy: DARTS search → retrain → ONNX export → ONNX Runtime profile.

The API functions carry the names of the stages (and CLI commands) and live in
``nasdeploy.stages``; the implementation packages are named so that no verb
shadows a module (``nasdeploy.strategies``, ``nasdeploy.training``,
``nasdeploy.deploy``).
"""

__version__ = "0.1.0"

from .config import RunConfig, load_config  # noqa: E402
from .data import Dataset, DataSpec, load_dataset  # noqa: E402
from .deploy.export import export  # noqa: E402
from .deploy.profile import profile  # noqa: E402
from .errors import NasdeployError  # noqa: E402
from .pipeline import pipeline  # noqa: E402
from .strategies.strategy import run_strategy as search  # noqa: E402
from .space.genotype import GENOTYPES, Genotype  # noqa: E402
from .space.mixed_op import MixedOp  # noqa: E402
from .space.network import Network  # noqa: E402
from .space.search_network import SearchNetwork  # noqa: E402
from .training import load_network, train  # noqa: E402

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
    "search",
    "train",
]
