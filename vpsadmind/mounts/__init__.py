"""VPS mounts of datasets and snapshots (contract 5.3, 10.1; docs/mounts.md).

* :mod:`~vpsadmind.mounts.spec`: the mount hash, validated (field-naming errors);
* :mod:`~vpsadmind.mounts.paths`: destinations opened without following the container's symlinks;
* :mod:`~vpsadmind.mounts.mounter`: the four mount types, umount, the start-time failure policies;
* :mod:`~vpsadmind.mounts.files`: the action scripts and the data file 5301 writes, backups and rollback;
* :mod:`~vpsadmind.mounts.script`: the program the action scripts run;
* :mod:`~vpsadmind.mounts.delayed`: the delayed mounter loop the daemon runs;
* :mod:`~vpsadmind.mounts.node`, :mod:`~vpsadmind.mounts.sinks`: what handlers share, where states go.
"""
