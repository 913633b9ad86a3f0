"""Benchmarks of vpsadmind against the real MariaDB and Mosquitto, with real daemon processes.

Run ``python -m bench`` (``make bench``); see ``docs/benchmarks.md`` for what each benchmark measures and the
recorded figures. Benchmarks print figures, they assert nothing: a missed target is reported, not raised.
"""
