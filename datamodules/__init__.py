"""LightningDataModules, dataset builders and transforms.

Embedded real data, few-shot tasks and full-scale loaders.

Import from the submodules (``datamodules.glyphs``, ``datamodules.scenes``, ...); this package itself
imports nothing heavy.
"""
