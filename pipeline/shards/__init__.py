"""Shard formats (Parquet default, HDF5 alternative), the manifest and one reader interface."""

from pipeline.shards.errors import ShardError
from pipeline.shards.io import ShardReadError, read_shard, write_shard
from pipeline.shards.manifest import (
    DatasetInfo,
    ManifestError,
    ShardEntry,
    ShardManifest,
    ShardPathError,
    read_manifest,
    sha256_file,
    shard_path,
    write_manifest,
)
from pipeline.shards.reader import ShardChecksumError, ShardContentError, ShardSet, open_shards
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
    "ShardContentError",
    "ShardEntry",
    "ShardError",
    "ShardManifest",
    "ShardPathError",
    "ShardReadError",
    "ShardRecord",
    "ShardSet",
    "ShardTable",
    "open_shards",
    "read_manifest",
    "read_shard",
    "sha256_file",
    "shard_file_name",
    "shard_path",
    "write_manifest",
    "write_shard",
]
