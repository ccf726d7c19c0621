"""Moved to :mod:`servicekit.ray_cluster` (shared with the tests); this name still works."""

from servicekit.ray_cluster import Cluster, local_cluster

__all__ = ["Cluster", "local_cluster"]
