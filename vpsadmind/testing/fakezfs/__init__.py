"""fake-zfs: a file-backed ``zfs``/``zpool`` that behaves like zfs-fuse 0.7.0 (see docs/fake-zfs.md)."""
