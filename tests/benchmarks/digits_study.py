"""A small real study for testing the runner, resume and SLURM: sklearn digits, a linear model.

Two stages (pretrain -> finetune, the second needs the first) x seeds. ``epoch_delay`` slows epochs
down so that a test can signal a running job. Registered through TSUITE_EXTRA_STUDIES in tests.
"""

from __future__ import annotations

import json
import time

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.core.findings import Claim, decide
from benchmarks.core.report import findings_section
from benchmarks.core.results import by_seed
from benchmarks.core.stats import less, paired, seed_means
from benchmarks.core.study import Run, RunContext, Study
from datamodules.samplers import EpochSeededRandomSampler

REGISTRATION = "digits=tests.benchmarks.digits_study:DigitsStudy"


class DigitsModel(L.LightningModule):
    def __init__(self, lr: float = 0.05, epoch_delay: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)
        self.drop = nn.Dropout(dropout)  # random masks: a resumed run must draw the uninterrupted run's masks
        self.lr, self.epoch_delay = lr, epoch_delay

    def forward(self, x):
        return self.net(self.drop(x))

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_train_epoch_end(self):
        time.sleep(self.epoch_delay)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def digits_data() -> TensorDataset:
    x, y = load_digits(return_X_y=True)
    return TensorDataset(torch.tensor(x[:512] / 16.0, dtype=torch.float32), torch.tensor(y[:512]))


def digits_loader(batch_size: int = 64) -> DataLoader:
    """512 digits; with ``batch_size`` = 256 on each of 2 DDP ranks, a step sees the same 512 as one process."""
    data = digits_data()
    return DataLoader(data, batch_size=batch_size, sampler=EpochSeededRandomSampler(len(data), seed=0))


def similarity_callbacks(run_dir):
    """Linear CKA of the logits with the start of training, every epoch, on 200 fixed digits."""
    from callbacks import RepresentationSnapshot, SimilarityTracker

    snapshot = RepresentationSnapshot(digits_data(), layers=["net"], probe_size=200, seed=0, save=False)
    return [snapshot, SimilarityTracker(("start",), "linear_cka", snapshots=snapshot, heatmaps="never",
                                        out_dir=run_dir / "similarity")]


class Interrupt(L.Callback):
    """Simulates Ctrl-C at the end of a given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class DigitsStudy(Study):
    name = "digits"
    interrupt_at: int | None = None
    executed: list[str] = []

    def plan(self, cfg):
        stage_cfg = {"epochs": cfg["epochs"], "lr": 0.05, "epoch_delay": cfg.get("epoch_delay", 0.0),
                     "batch_size": cfg.get("batch_size", 64)}
        if cfg.get("similarity"):  # only when asked: keeps the run keys of the other tests unchanged
            stage_cfg["similarity"] = True
        if cfg.get("dropout"):
            stage_cfg["dropout"] = cfg["dropout"]
        failing = {"fail": True} if "fail_seed" in cfg else {}
        pre = [Run("digits", "pretrain", {"seed": s}, {**stage_cfg, **(failing if s == cfg.get("fail_seed") else {})})
               for s in cfg["seeds"]]
        post = [Run("digits", "finetune", {"seed": s}, {"epochs": 2}, needs=(p.key,))
                for s, p in zip(cfg["seeds"], pre)]
        return pre + post

    def execute(self, run: Run, ctx: RunContext):
        L.seed_everything(ctx.seed)
        self.executed.append(run.key)
        if run.config.get("fail"):
            raise RuntimeError(f"seed {ctx.seed} fails on purpose (config fail_seed)")
        config = run.config
        model = DigitsModel(config.get("lr", 0.05), config.get("epoch_delay", 0.0), config.get("dropout", 0.0))
        for key in run.needs:
            model.load_state_dict(torch.load(ctx.output_of(key) / "model.pt"))
        callbacks = [Interrupt(self.interrupt_at)] if self.interrupt_at is not None else []
        if run.config.get("similarity"):
            callbacks += similarity_callbacks(ctx.run_dir)
        trainer = ctx.trainer(max_epochs=run.config["epochs"], callbacks=callbacks)
        batch_size = run.config.get("batch_size", 64) // max(1, trainer.world_size)
        trainer.fit(model, digits_loader(batch_size), ckpt_path=ctx.resume_path())
        if trainer.global_rank == 0:
            torch.save(model.state_dict(), ctx.run_dir / "model.pt")
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        metrics = {"train_loss": float(trainer.callback_metrics["train/loss"]), "epochs": trainer.current_epoch,
                   "weight_norm": float(weights.norm())}
        if run.config.get("similarity"):  # written by rank 0, also under ddp_spawn
            rows = json.loads((ctx.run_dir / "similarity" / "similarity.json").read_text())["rows"]
            metrics["cka_start_final"] = rows[-1]["value"]
            metrics["snapshots"] = len(rows)
        return metrics

    claims = (Claim("finetune_lowers_loss", "fine-tuning ends with a lower train loss than pretraining",
                    "none (a test fixture)"),)
    protocol = "tests/benchmarks/digits_study.py"

    def findings(self, results):
        pre = seed_means(by_seed(results.stage("pretrain"), lambda r: r["metrics"]["train_loss"]))
        post = seed_means(by_seed(results.stage("finetune"), lambda r: r["metrics"]["train_loss"]))
        return [decide(self.claims[0], less(paired(post, pre)), unit="seed")]

    def write_report(self, results, findings):
        path = results.root / "report.md"
        path.write_text(f"{results.n_finished} runs\n" + findings_section(findings, results, self.protocol))
        return path
