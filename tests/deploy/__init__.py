"""Tests of the Kubernetes manifests (``deploy/k8s/``), rendered and validated offline."""
