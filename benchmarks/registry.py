"""The studies the suite knows: name -> "module:Class" (imported lazily so the CLI starts fast)."""

from __future__ import annotations

import importlib

from benchmarks.errors import unknown_name
from benchmarks.study import Study

STUDIES: dict[str, str] = {
    "segmentation": "benchmarks.segmentation:SegmentationStudy",
    "finetune": "benchmarks.finetune:FinetuneStudy",
    "transfer": "benchmarks.transfer:TransferStudy",
    "maml": "benchmarks.maml:MAMLStudy",
}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise unknown_name("study", name, STUDIES)
    module_name, class_name = STUDIES[name].split(":")
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
