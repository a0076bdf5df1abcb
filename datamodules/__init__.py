"""LightningDataModules, dataset builders and transforms.

Embedded real data, few-shot tasks and full-scale loaders.

Import from the submodules (``datamodules.glyphs``, ``datamodules.scenes``, ...) or use
``datamodules.registry.get_datamodule(name, **kwargs)``; this package itself imports nothing heavy.
"""
