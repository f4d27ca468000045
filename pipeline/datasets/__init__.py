"""Detection datasets: manifests (``manifests/*.yaml``) and readers yielding ImageRecords.

Typical use by a CLI: ``manifest = load_manifest(args.dataset)``, then
``root = resolve_root(manifest, args.root)`` (``--root``, else the manifest's environment
variable, else its default), ``records, stats = read_records(manifest, args.split, root)``,
``check_images_exist(records, root)``, print ``stats.summary()`` and store
``dataset_fingerprint(manifest, args.split, root)`` with the output.
"""

from pipeline.datasets.images import ImageHeader, check_images_exist, read_image_header
from pipeline.datasets.manifest import (
    DatasetManifest,
    DataSource,
    SplitSpec,
    available_datasets,
    load_manifest,
    manifests_dir,
    resolve_root,
)
from pipeline.datasets.readers import dataset_fingerprint, read_records
from pipeline.datasets.stats import DatasetWarning, ReaderStats

__all__ = [
    "DataSource",
    "DatasetManifest",
    "DatasetWarning",
    "ImageHeader",
    "ReaderStats",
    "SplitSpec",
    "available_datasets",
    "check_images_exist",
    "dataset_fingerprint",
    "load_manifest",
    "manifests_dir",
    "read_image_header",
    "read_records",
    "resolve_root",
]
