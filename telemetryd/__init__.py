"""telemetryd: GPU fleet telemetry for data centres.

Agents sample GPUs through NVML and the host through psutil and sysfs, and publish one
versioned report per interval; an aggregator stores, watches and alerts. The packages
`collectors` (what a node can read) and `exporters` (ways out) sit beside this one.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
