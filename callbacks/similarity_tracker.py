"""Similarity of the current representations with reference ones, per layer, over training.

Listens to a ``RepresentationSnapshot``: for every snapshot it compares each watched layer with the
same layer of every reference (``"sim/<ref>/<layer>"`` curves against the global step, with the epoch
in the row), and at fit end (or at every snapshot) the full layer x layer matrix per reference
(heatmap PNG + ``wandb.Table``). ``similarity.json`` / ``similarity.csv`` in the run directory hold all
rows so far. The math lives in ``similarity/``; this module only feeds it and reports.

DDP: snapshots are taken on every rank; similarities are computed and reported on global rank 0 only
(nothing in here communicates between ranks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from callbacks.errors import CallbackConfigError, check_choice, did_you_mean
from callbacks.plots import curves_figure, heatmap_figure
from callbacks.references import Reference, StartReference, as_reference, reference_representations
from callbacks.run_outputs import STEP_KEY, RunOutputs
from callbacks.snapshot import RepresentationSnapshot, Snapshot
from similarity import MEASURES, PREPARED_MEASURES, PreparedReference, get_measure, prepare_reference, similarity_matrix
from similarity import Measure as RegisteredMeasure

Measure = Callable[[torch.Tensor, torch.Tensor], float]


def as_matrix(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) representations as (N, D) rows for the measures."""
    return x.reshape(len(x), -1)


def layer_similarities(current: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                       measure: Measure) -> dict[str, float]:
    """measure(current[layer], reference[layer]) for every layer both sides have."""
    return {name: float(measure(as_matrix(x), as_matrix(reference[name])))
            for name, x in current.items() if name in reference}


class SimilarityTracker(Callback):
    """Track similarity of snapshots with references during training.

    Args:
        references: name -> reference (``"start"``, ``"random_init"``, state dict, module, checkpoint path,
            or a reference object), or a sequence of shortcut names (``("start", "random_init")``).
        measure: a name from ``similarity`` (e.g. "linear_cka", "rsa") or a callable ``(x, y) -> float``.
        snapshots: the ``RepresentationSnapshot`` to listen to (default: the one among trainer.callbacks).
        prefix: W&B/file key prefix; keys are ``<prefix>/<reference>/<layer>``.
        heatmaps: "end" (layer x layer matrices of the last snapshot), "every" (each snapshot) or "never".
        include_on_demand: also compare snapshots taken with ``take()`` (e.g. MAML inner steps).
        out_dir: run directory (default ``trainer.default_root_dir``).
    """

    def __init__(self, references: Mapping[str, Any] | Sequence[str] = ("start", "random_init"),
                 measure: str | Measure = "linear_cka", *, snapshots: RepresentationSnapshot | None = None,
                 prefix: str = "sim", heatmaps: str = "end", include_on_demand: bool = False,
                 out_dir: str | Path | None = None) -> None:
        super().__init__()
        if not isinstance(references, Mapping):
            references = {str(name): name for name in references}
        if not references:
            raise CallbackConfigError("SimilarityTracker got no references",
                                      'pass e.g. references=("start",)')
        self.references: dict[str, Reference] = {name: as_reference(spec)
                                                  for name, spec in references.items()}
        self.measure: Measure = get_measure(measure) if isinstance(measure, str) else measure
        # registry measures have a fast layer x layer path in similarity_matrix
        self._named_measure = isinstance(self.measure, RegisteredMeasure)
        self.measure_name = (self.measure.name if self._named_measure
                             else getattr(measure, "__name__", type(measure).__name__))
        self.snapshots, self.prefix = snapshots, prefix
        self.heatmaps = check_choice("heatmaps", heatmaps, ("end", "every", "never"))
        self.include_on_demand, self.out_dir = include_on_demand, out_dir
        self.reference_reps: dict[str, dict[str, torch.Tensor]] = {}
        self.rows: list[dict[str, Any]] = []
        self.matrices: dict[str, dict[str, Any]] = {}
        self._outputs: RunOutputs | None = None
        self._last_matrices: tuple[Snapshot, dict[str, Any]] | None = None
        self._prepared: tuple[tuple, PreparedReference] | None = None  # (reference key, prepared)

    # -- wiring ------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.snapshots is None:
            found = [cb for cb in trainer.callbacks if isinstance(cb, RepresentationSnapshot)]
            if len(found) != 1:
                raise CallbackConfigError(
                    f"SimilarityTracker needs exactly one RepresentationSnapshot among the callbacks, found "
                    f"{len(found)}",
                    "add one, or pass snapshots=<the RepresentationSnapshot> to SimilarityTracker")
            self.snapshots = found[0]
        self.snapshots.add_listener(self)
        self._outputs = RunOutputs(trainer, self.out_dir)

    def _enabled(self, trainer: Trainer | None) -> bool:
        return trainer is None or trainer.is_global_zero

    def _resolve_references(self, first: Snapshot, module: nn.Module) -> None:
        assert self.snapshots is not None
        for name, reference in self.references.items():
            if name in self.reference_reps:
                continue
            if isinstance(reference, StartReference):
                self.reference_reps[name] = dict(first.representations)
            else:
                self.reference_reps[name] = reference_representations(reference, module,
                                                                      self.snapshots.capture)
            missing = set(first.representations) - set(self.reference_reps[name])
            if missing:
                raise CallbackConfigError(
                    f'reference "{name}" lacks layers {sorted(missing)}.'
                    f"{did_you_mean(sorted(missing)[0], self.reference_reps[name])}",
                    "give representations for every watched layer (same names as the snapshot)")

    # -- comparing ---------------------------------------------------------------------------------
    def compare(self, snapshot: Snapshot, full: bool) -> dict[str, tuple[torch.Tensor, list[str], list[str]]]:
        """Per reference: the layer x layer matrix (``full``) or only same-layer values (diagonal).

        With a registry measure, one ``similarity_matrix`` call covers every reference: each layer is
        prepared once (e.g. its Gram matrix), after which the cross pairs cost little, so the full
        matrices come almost for free. With linear CKA (the default) the reference layers are prepared
        once per fit instead of once per snapshot (``similarity.prepare_reference``, same values). A custom
        callable is only called on same-layer pairs unless ``full``.
        """
        current = {k: as_matrix(v) for k, v in snapshot.representations.items()}
        if self._named_measure or full:
            combined = {(ref, layer): as_matrix(x) for ref, reps in self.reference_reps.items()
                        for layer, x in reps.items()}
            keys = list(combined)
            prepared = self._prepared_measure()
            if prepared is not None:
                matrix, rows = prepared.matrix(current), list(current)
            else:
                matrix, rows, _ = similarity_matrix(current, {str(i): combined[k] for i, k in enumerate(keys)},
                                                    measure=self.measure)
            out = {}
            for ref in self.reference_reps:
                columns = [i for i, (r, _) in enumerate(keys) if r == ref]
                out[ref] = (matrix[:, columns], list(rows), [keys[i][1] for i in columns])
            return out
        out = {}
        for ref, reps in self.reference_reps.items():
            values = layer_similarities(snapshot.representations, reps, self.measure)
            layers = list(values)
            out[ref] = (torch.diag(torch.tensor([values[k] for k in layers], dtype=torch.float64)), layers, layers)
        return out

    def _prepared_measure(self) -> PreparedReference | None:
        """The registry's linear CKA with every reference layer prepared once (None for other measures).

        References stay fixed during a fit, so their centring and Gram matrices are computed at the first
        comparison and reused; the preparation is redone only if the reference tensors change.
        """
        name = getattr(self.measure, "name", None)
        if name not in PREPARED_MEASURES or getattr(self.measure, "fn", None) is not MEASURES[name].fn:
            return None
        key = tuple((ref, layer, id(x), x.data_ptr(), tuple(x.shape))
                    for ref, reps in self.reference_reps.items() for layer, x in reps.items())
        if self._prepared is None or self._prepared[0] != key:
            references = {str(i): as_matrix(x) for i, x in enumerate(
                x for reps in self.reference_reps.values() for x in reps.values())}
            self._prepared = (key, prepare_reference(references, name))
        return self._prepared[1]

    # -- listener interface ------------------------------------------------------------------------
    def on_snapshot(self, snapshot: Snapshot, trainer: Trainer | None, module: nn.Module) -> None:
        if not self._enabled(trainer) or (snapshot.moment == "on_demand" and not self.include_on_demand):
            return
        self._resolve_references(snapshot, module)
        compared = self.compare(snapshot, full=self.heatmaps == "every")
        logged: dict[str, float] = {}
        for ref_name, (matrix, rows, cols) in compared.items():
            for i, layer in enumerate(rows):
                if layer not in cols:
                    continue
                value = float(matrix[i, cols.index(layer)])
                self.rows.append({"tag": snapshot.tag, "epoch": snapshot.epoch, "step": snapshot.step,
                                  "moment": snapshot.moment, "reference": ref_name, "layer": layer,
                                  "measure": self.measure_name, "value": value})
                logged[f"{self.prefix}/{ref_name}/{layer}"] = value
        if self._named_measure or self.heatmaps == "every":
            self._last_matrices = (snapshot, compared)
        self._report_rows(logged, snapshot)
        if self.heatmaps == "every":
            self._report_matrices(snapshot, compared)

    def on_snapshots_end(self, latest: Snapshot, trainer: Trainer, module: nn.Module) -> None:
        if not self._enabled(trainer) or not self.rows:
            return
        if self.heatmaps == "end":
            cached = self._last_matrices
            compared = cached[1] if cached is not None and cached[0] is latest else self.compare(latest, full=True)
            self._report_matrices(latest, compared)
        self._report_curves()

    # -- reporting ---------------------------------------------------------------------------------
    def _report_rows(self, logged: dict[str, float], snapshot: Snapshot) -> None:
        outputs = self._outputs
        if outputs is None:
            return
        outputs.log({**logged, "epoch": snapshot.epoch, STEP_KEY: snapshot.step})
        outputs.json("similarity.json", {"measure": self.measure_name, "references": list(self.references),
                                         "prefix": self.prefix, "rows": self.rows})
        outputs.csv("similarity.csv", self.rows)

    def _report_matrices(self, snapshot: Snapshot, compared: dict[str, tuple[torch.Tensor, list[str], list[str]]]
                         ) -> None:
        outputs = self._outputs
        for ref_name, (matrix, rows, cols) in compared.items():
            record = {"tag": snapshot.tag, "epoch": snapshot.epoch, "step": snapshot.step,
                      "reference": ref_name, "measure": self.measure_name, "rows": rows, "columns": cols,
                      "values": matrix.tolist()}
            self.matrices[ref_name] = record
            if outputs is None:
                continue
            stem = f"similarity_matrix_{ref_name}"
            outputs.json(f"{stem}.json", record)
            finite = matrix[torch.isfinite(matrix)]
            in_unit = finite.numel() > 0 and bool(((finite >= 0) & (finite <= 1)).all())  # else autoscale
            figure = heatmap_figure(matrix.numpy(), rows, cols, vmin=0.0 if in_unit else None,
                                    vmax=1.0 if in_unit else None,
                                    title=f"{self.measure_name}: {snapshot.tag} vs {ref_name}",
                                    xlabel=f"layer ({ref_name})", ylabel=f"layer ({snapshot.tag})",
                                    cbar_label=self.measure_name)
            outputs.figure(f"{stem}.png", figure, wandb_key=f"{self.prefix}/{ref_name}/matrix_image")
            outputs.table(f"{self.prefix}/{ref_name}/matrix",
                          [{"layer": r, **{c: float(v) for c, v in zip(cols, values)}}
                           for r, values in zip(rows, matrix.tolist())])

    def _report_curves(self) -> None:
        outputs = self._outputs
        if outputs is None:
            return
        for ref_name in self.reference_reps:
            rows = [r for r in self.rows if r["reference"] == ref_name]
            series: dict[str, list[float]] = {}
            for r in rows:
                series.setdefault(r["layer"], []).append(r["value"])
            xs = [r["step"] for r in rows if r["layer"] == rows[0]["layer"]]
            figure = curves_figure(xs, series, title=f"{self.measure_name} with {ref_name}",
                                   xlabel="global step", ylabel=self.measure_name)
            outputs.figure(f"similarity_curves_{ref_name}.png", figure,
                           wandb_key=f"{self.prefix}/{ref_name}/curves_image")
