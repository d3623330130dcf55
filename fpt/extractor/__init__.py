"""Fingerprint extractor: network, training stream, training loop, checkpoints, embedding."""
