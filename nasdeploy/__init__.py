"""nasdeploy: DARTS search → retrain → ONNX export → ONNX Runtime profile."""

__version__ = "0.1.0"
