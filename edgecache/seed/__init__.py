"""Seeding a cache from a disk (air-gapped sites): archives unpacked and read
(archive.py, images.py), imported into the store (importer.py), and the pinned set
exported for another box (exporter.py)."""
