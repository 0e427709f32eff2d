"""hutch: a self-hosted cloud controller where every workload runs in its own micro-VM."""

__version__ = "0.1.0"
