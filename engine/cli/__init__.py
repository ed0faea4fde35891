"""The ``capstan`` command line (:mod:`engine.cli.main`) and its admin API client (:mod:`engine.cli.client`).

Kept import-free so ``capstan --help`` starts fast.
"""
