"""Snapshot streams between nodes and pools: the protocol (:mod:`.wire`), the byte movers (:mod:`.pump`),
both ends (:mod:`.receiver`, :mod:`.sender`), the database side (:mod:`.store`) and holds (:mod:`.holds`).
The transactions that use them are in :mod:`vpsadmind.handlers.transfer`; docs/transfers.md explains it all.
"""
