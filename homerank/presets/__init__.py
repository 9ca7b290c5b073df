"""Configs shipped with the package: ``--config preset:NAME`` loads ``NAME.yaml`` from this folder.

The first comment line of each file is its one-line summary in ``homerank --help``.
"""
