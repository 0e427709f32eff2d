"""The node side: turns settings into runtime drivers and requests into sandbox specs.

`hutch sandbox` uses it directly on one host; `hutch agent` (the node agent) is built on it.
"""
