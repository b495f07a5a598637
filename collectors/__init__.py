"""What a node can read: GPU sources (NVML, simulator) and host collector plugins.

Each module is one collector or one part of the NVML stack; plugins are found by name
through telemetryd.registry, built-ins and entry points alike.
"""
