"""blobsync: end-to-end encrypted blob sync, speaking Soledad's blobs protocol."""

__version__ = "0.1.0"
