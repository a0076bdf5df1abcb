"""The studies the suite knows: name -> "module:Class" (imported lazily so the CLI starts fast)."""

from __future__ import annotations

import importlib
import importlib.util
import os

from benchmarks.core.errors import unknown_name
from benchmarks.core.study import Study

STUDIES: dict[str, str] = {
    "segmentation": "benchmarks.studies.segmentation.study:SegmentationStudy",
    "finetune": "benchmarks.studies.finetune.study:FinetuneStudy",
    "transfer": "benchmarks.studies.transfer.study:TransferStudy",
    "maml": "benchmarks.studies.maml.study:MAMLStudy",
}


def extra_studies() -> dict[str, str]:
    """Studies added without editing this file: TSUITE_EXTRA_STUDIES="name=module:Class,..."."""
    extra = os.environ.get("TSUITE_EXTRA_STUDIES", "")
    return dict(item.split("=", 1) for item in extra.split(",") if "=" in item)


def check_study(name: str) -> None:
    """Raise the did-you-mean error for an unknown study name."""
    studies = {**STUDIES, **extra_studies()}
    if name not in studies:
        raise unknown_name("study", name, studies)


def get_study(name: str) -> Study:
    check_study(name)
    studies = {**STUDIES, **extra_studies()}
    module_name, class_name = studies[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise unknown_name("study (not built yet)", name,
                               [s for s in STUDIES if _exists(STUDIES[s])]) from None
        raise
    return getattr(module, class_name)()


def _exists(spec: str) -> bool:
    return importlib.util.find_spec(spec.split(":")[0]) is not None
