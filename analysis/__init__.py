"""Analysis math of the suite in plain PyTorch: no Lightning, usable from a study, a notebook or a callback.

- ``analysis.interpolation``: ``interpolation_curve`` (loss/error along theta(lambda)), ``barrier``.
- ``analysis.criticality``: ``module_criticality`` (Chatterji et al. 2020), ``criticality_value``.
- ``analysis.evaluation``: ``evaluate`` (mean loss, top-1 error), ``recompute_batchnorm``.
- ``analysis.representations``: ``capture_representations`` (layer outputs on given inputs).
- ``analysis.states``: state sources (state dict, module, checkpoint), copies, ``lerp_state``.
- ``analysis.layers``: ``resolve_layers`` (names/globs over ``named_modules()``), ``parameter_groups``.
- ``analysis.errors``: ``ConfigError`` (problem + fix), ``did_you_mean``, ``check_choice``.
- ``analysis.files``: ``atomic_write``.

Similarity measures live in ``similarity/`` (e.g. ``similarity.compare_representations``); the
Lightning callbacks that run this math during training live in ``callbacks/``. Import from the
submodules: this package itself imports nothing, so ``analysis.errors`` and ``analysis.files`` stay
cheap to import (no torch).
"""
