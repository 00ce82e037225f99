"""The safety stage: NSFW filtering and face blurring of the raw pool, as the paper's pool
had after download (before any descriptor is computed)."""
