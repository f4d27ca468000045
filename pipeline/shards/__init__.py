"""Shard formats (Parquet default, HDF5 alternative), the manifest and one reader interface."""

from pipeline.shards.io import ShardReadError, read_shard, write_shard
from pipeline.shards.manifest import (
    DatasetInfo,
    ManifestError,
    ShardEntry,
    ShardManifest,
    read_manifest,
    sha256_file,
    write_manifest,
)
from pipeline.shards.reader import ShardChecksumError, ShardSet, open_shards
from pipeline.shards.schema import DTYPES, FORMATS, MANIFEST_NAME, SCHEMA_VERSION, shard_file_name
from pipeline.shards.table import ShardRecord, ShardTable

__all__ = [
    "DTYPES",
    "FORMATS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "DatasetInfo",
    "ManifestError",
    "ShardChecksumError",
    "ShardEntry",
    "ShardManifest",
    "ShardReadError",
    "ShardRecord",
    "ShardSet",
    "ShardTable",
    "open_shards",
    "read_manifest",
    "read_shard",
    "sha256_file",
    "shard_file_name",
    "write_manifest",
    "write_shard",
]
