"""Tests of the Ray paths (batch on Ray Data, service on Ray Serve) on a real local cluster."""
