"""Curation stages (engine-free): crawl, hashes, dedup, embed, index, retrieval, seeds."""
