"""Typed errors. Every one carries the problem and the fix; the CLI prints one line."""

from __future__ import annotations


class NasdeployError(Exception):
    """Base error: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class ConfigError(NasdeployError):
    """Bad configuration value, unknown key, wrong type, impossible option."""


class DataError(NasdeployError):
    """Dataset missing, malformed, empty or inconsistent."""


class GenotypeError(NasdeployError):
    """Genotype JSON malformed or inconsistent with the search space."""


class CheckpointError(NasdeployError):
    """Checkpoint missing, truncated, foreign, or mismatched with the request."""


class KernelError(NasdeployError):
    """The requested mixed-op kernel is unavailable or got bad arguments."""


class LatencyTargetError(NasdeployError):
    """A latency target that the search space cannot meet, or a non-positive one."""


class ExportError(NasdeployError):
    """ONNX export, checker or parity failed."""


class ProfileError(NasdeployError):
    """The model cannot be profiled as asked (not ONNX, bad provider, bad batch)."""


class BusyMachineWarning(UserWarning):
    """More threads than free cores: timings and step times will not be what a quiet machine gives."""
