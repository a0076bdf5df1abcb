"""W&B dashboards as code: each study declares its panels; this module builds the W&B workspace from them.

A ``Dashboard`` is plain data (sections of line plots, scatter plots, media, tables and a parallel-coordinates
plot) so that a test can check every key it reads against the offline runs a study logs. ``workspace`` turns it
into a ``wandb_workspaces`` Workspace: runs filtered to the study's profile, grouped by stage and by the
params that vary (so a line shows the mean over seeds with a standard-deviation band), and a findings section
that shows the verdicts table every study logs. ``view_spec`` is the JSON view spec W&B stores, with stable
panel ids (a golden file can compare it), validated by loading it back. Saving needs a login; building
does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core.errors import UserError

EPOCH = "epoch"
IMPLICIT_X = {None, "", "Step", "_step"}  # wandb's default axis: the panel would not say what x is


@dataclass(frozen=True)
class Line:
    """Metrics against an explicit x-axis (a key the runs log, increasing within each run). ``y_regex`` plots
    every metric whose full name matches (e.g. one line per layer, whatever the backbone's layer names)."""

    title: str
    y: tuple[str, ...] = ()
    x: str = EPOCH
    y_regex: str | None = None
    log_y: bool = False


@dataclass(frozen=True)
class Scatter:
    """One point per run: a summary metric against a run parameter (``params.<name>``) or another metric."""

    title: str
    x: str
    y: str


@dataclass(frozen=True)
class Media:
    """Images logged by the runs (heatmaps, curves drawn by the suite)."""

    title: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A W&B table logged by the runs (shown as a table of the runs in view)."""

    title: str
    key: str


@dataclass(frozen=True)
class Parallel:
    """Parallel coordinates: the varying params (config) and one outcome (summary)."""

    title: str
    params: tuple[str, ...]
    outcome: str


Panel = Line | Scatter | Media | Table | Parallel


@dataclass(frozen=True)
class Section:
    name: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    """What a reviewer of one study sees. ``group_by``: the params a band pools seeds over (never the seed);
    ``outcome``: the summary metric the parallel-coordinates plot shows against ``group_by``."""

    study: str
    sections: tuple[Section, ...]
    group_by: tuple[str, ...]
    outcome: str

    def all_sections(self) -> tuple[Section, ...]:
        """The study's sections, then the findings section and the overview every study has."""
        findings = Section("Findings", (Table("Findings: verdict, effect, CI, n", "findings"),))
        overview = Section("Variants", (Parallel(f"{', '.join(self.group_by)} against {self.outcome}",
                                                 tuple(f"params.{p}" for p in self.group_by), self.outcome),))
        return (findings, *self.sections, overview)


def workspace(dashboard: Dashboard, profile: str, entity: str = "", project: str = ""):
    """The W&B workspace of one study and profile (``wandb_workspaces.workspaces.Workspace``)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = []
    for i, section in enumerate(dashboard.all_sections()):
        panels = []
        for j, panel in enumerate(section.panels):
            built = _panel(panel, wr)
            built._id = f"{dashboard.study}-{i}-{j}"  # stable: the spec can be compared with a golden file
            panels.append(built)
        sections.append(ws.Section(name=section.name, panels=panels, is_open=True))
    return ws.Workspace(
        entity=entity or "<entity>", project=project or f"transfer-suite-{dashboard.study}",
        name=f"{dashboard.study} ({profile})", sections=sections,
        settings=ws.WorkspaceSettings(x_axis=EPOCH),
        runset_settings=ws.RunsetSettings(
            filters=[expr.Config("profile") == profile],
            groupby=[expr.Metric("JobType"), *(expr.Config(f"params.{p}") for p in dashboard.group_by)]))


def _panel(panel, wr):
    if isinstance(panel, Line):
        if panel.x in IMPLICIT_X:
            raise ValueError(f"line panel {panel.title!r} must name its x-axis")
        return wr.LinePlot(title=panel.title, x=panel.x, y=list(panel.y), metric_regex=panel.y_regex, title_x=panel.x,
                           log_y=panel.log_y or None, groupby_aggfunc="mean", groupby_rangefunc="stddev")
    if isinstance(panel, Scatter):
        x = wr.Config(panel.x) if panel.x.startswith("params.") else wr.SummaryMetric(panel.x)
        return wr.ScatterPlot(title=panel.title, x=x, y=wr.SummaryMetric(panel.y))
    if isinstance(panel, Media):
        return wr.MediaBrowser(title=panel.title, media_keys=list(panel.keys))
    if isinstance(panel, Table):
        return wr.WeavePanelSummaryTable(table_name=panel.key)
    return wr.ParallelCoordinatesPlot(title=panel.title, columns=[
        *(wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p)) for p in panel.params),
        wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(panel.outcome))])


def view_spec(dashboard: Dashboard, profile: str, entity: str = "", project: str = "") -> dict:
    """The workspace as the JSON view spec W&B stores, checked: it loads back into an equal workspace and every
    line panel names its x-axis."""
    from wandb_workspaces.workspaces import Workspace, internal

    built = workspace(dashboard, profile, entity, project)
    spec = built._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
    back = Workspace._from_model(internal.View.model_validate(spec))
    if back._to_model().model_dump(by_alias=True, exclude_none=True, mode="json") != spec:
        raise RuntimeError(f"the {dashboard.study} dashboard does not round-trip through its view spec")
    for panel in line_panels(spec):
        if panel["config"].get("xAxis") in IMPLICIT_X:
            raise RuntimeError(f"line panel {panel['config'].get('chartTitle')!r} has no explicit x-axis")
    return spec


def line_panels(spec: dict) -> list[dict]:
    """Every line-plot panel of a view spec."""
    return [panel for section in spec["spec"]["section"]["panelBankConfig"]["sections"]
            for panel in section["panels"] if panel.get("viewType") == "Run History Line Plot"]


def write_dashboard(study, cfg: dict, root: Path, entity: str = "", publish: bool = False) -> Path:
    """Write the study's view spec to ``<root>/dashboard.json`` (``root``: the study's results directory); with
    ``publish``, also save the workspace to the user's W&B entity and project."""
    dashboard = study.dashboard(cfg)
    profile = str(cfg.get("profile", ""))
    spec = view_spec(dashboard, profile, entity)
    path = root / "dashboard.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    print(f"dashboard: {path} ({sum(len(s.panels) for s in dashboard.all_sections())} panels, profile {profile})")
    if publish:
        _publish(dashboard, profile, entity)
    else:
        print(f"to publish it: log in (`wandb login` or WANDB_API_KEY=...), then `make dashboards STUDY={study.name} "
              f"PROFILE={profile} ARGS='--wandb online --entity <user or team>'`; upload the offline runs with "
              f"`wandb sync {root}/*/wandb/offline-run-* {root}/wandb/offline-run-*`")
    return path


def _publish(dashboard: Dashboard, profile: str, entity: str) -> None:
    import wandb

    from benchmarks.core.wandb_logger import check_online_logging

    check_online_logging()
    entity = entity or wandb.Api().default_entity
    if not entity:
        raise UserError("no W&B entity to save the dashboard to", "pass --entity <user or team>")
    saved = workspace(dashboard, profile, entity).save()
    print(f"dashboard saved to W&B: {saved.url}")


__all__ = ["Dashboard", "Section", "Line", "Scatter", "Media", "Table", "Parallel", "EPOCH",
           "view_spec", "write_dashboard", "workspace", "line_panels"]
