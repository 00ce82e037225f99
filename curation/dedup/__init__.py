"""Deduplication: exact and perceptual hashes, copy detection, evaluation decontamination."""
