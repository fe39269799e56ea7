"""nasdeploy: DARTS search → retrain → ONNX export → ONNX Runtime profile.

The API functions carry the names of the stages (and CLI commands). They are
bound here after their modules are imported, so ``nasdeploy.search`` and
``nasdeploy.train`` are the functions; reach the modules with
``from nasdeploy.search import darts`` / ``import nasdeploy.train`` inside
``sys.modules`` if ever needed.
"""

__version__ = "0.1.0"

from .config import RunConfig, load_config  # noqa: E402
from .data import Dataset, DataSpec, load_dataset  # noqa: E402
from .deploy.export import export  # noqa: E402
from .deploy.profile import profile  # noqa: E402
from .errors import NasdeployError  # noqa: E402
from .pipeline import pipeline  # noqa: E402
from .search.strategy import run_strategy as search  # noqa: E402
from .space.genotype import GENOTYPES, Genotype  # noqa: E402
from .space.mixed_op import MixedOp  # noqa: E402
from .space.network import Network  # noqa: E402
from .space.search_network import SearchNetwork  # noqa: E402
from .train import load_network, train  # noqa: E402

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
