"""Evaluation of frozen backbones: k-NN (and, later, linear probes)."""
