"""talos-os: a minimal, immutable Linux distribution whose only job is to run Kubernetes."""

__version__ = "0.1.0"
