"""The reliability soak of issue 9: a small cluster under load, faults and hostile timing, with nothing lost.

``python -m bench.soak`` starts a private MariaDB and Mosquitto, three zfs-fuse pools, a fake OpenVZ tree per
hypervisor, an SMTP server and three vpsadmind processes (:mod:`bench.soak.cluster`); fires chains the way the
API does on a handful of VPSes, a quarter of them with a failing step at a random place
(:mod:`bench.soak.workload`); injects faults at random moments (:mod:`bench.soak.faults`); checks each chain as
it ends and the whole cluster at the end (:mod:`bench.soak.runner`, :mod:`bench.soak.world`), and prints the
figures docs/reliability.md records.
"""
