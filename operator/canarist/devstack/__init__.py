"""The embedded local stack: a real Kubernetes control plane with simulated nodes, and Prometheus.

Used by the test fixtures, by `make demo`, and by hand (`python -m canarist.devstack up`).
Everything it starts listens on 127.0.0.1 only.
"""
