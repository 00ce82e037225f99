"""Seed sets: the curated datasets retrieval starts from, read from their own layouts."""
