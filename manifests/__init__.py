"""The contract between stages: Arrow schemas, sharded Parquet IO and image-shard IO."""
