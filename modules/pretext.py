"""Source-task modules that produce U-Net encoders (and decoders) for transfer to a target segmentation task.

Every module builds its network with :func:`modules.nets.unet.build_unet` so that the encoder (and
decoder) keys are exactly those of the target :class:`~modules.segmentation.SegmentationModule`, and
says what it hands on with ``transferable_parts()``:

- :class:`ClassificationPretext`: scene -> object class, a linear head on the pooled deepest encoder
  stage (encoder only; labels needed).
- Segmentation pretraining is :class:`~modules.segmentation.SegmentationModule` on the source domain
  (encoder + decoder; masks needed).
- :class:`ReconstructionPretext`: a masked, denoising U-Net autoencoder: restore the clean image from one with
  random patches masked out and Gaussian noise added, MSE (encoder + decoder; no labels). A plain autoencoder
  would be solved by the U-Net's shallowest skip connection copying the input, teaching the encoder nothing.
- :class:`ContrastiveReconstructionPretext`: the paper's proposal, no labels: SimCLR-style NT-Xent on the
  pooled deepest encoder features of two augmented views, plus denoising, inpainting and colourisation
  heads on the U-Net decoder (encoder + decoder).
Inputs are [0, 1] images; every module normalises with ``input_mean``/``input_std`` like the target does.
Every module takes ``schedule`` (``"constant"`` or ``"cosine"`` decay over the Trainer's ``max_epochs``) so that
all source tasks can follow one budget rule. Random corruptions of validation batches come from a generator
re-seeded per batch, so a validation loss (what early stopping watches) measures the network, not the draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from modules.distributed import release_process_group_at_exit
from modules.nets.unet import DEFAULT_DECODER_CHANNELS, DEFAULT_ENCODER, build_unet
from modules.segmentation import SegmentationModule, optimiser_and_schedule, save_parts, unpack_batch

CORRUPTIONS = ("denoise", "inpaint", "colourise")


class PretextModule(L.LightningModule):
    """Shared parts of the source-task modules: input normalisation, optimiser, export of parts."""

    net: nn.Module

    def _setup_common(self, input_mean: Sequence[float], input_std: Sequence[float]) -> None:
        self.register_buffer("input_mean", torch.tensor(list(input_mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(list(input_std)).view(1, -1, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def transferable_parts(self) -> dict[str, nn.Module]:
        return {"encoder": self.net.encoder, "decoder": self.net.decoder}

    def setup(self, stage: str) -> None:
        release_process_group_at_exit()

    def configure_optimizers(self):
        return optimiser_and_schedule(self, self.hparams.lr, self.hparams.weight_decay,
                                      self.hparams.get("schedule", "constant"))


def validation_generator(batch_idx: int, seed: int = 0) -> torch.Generator:
    """The same random corruptions for validation batch ``batch_idx`` in every epoch."""
    return torch.Generator().manual_seed(10_007 * (seed + 1) + batch_idx)


def pooled_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global average pool of the deepest encoder stage: (N, C)."""
    return encoder(x)[-1].mean(dim=(2, 3))


class ClassificationPretext(PretextModule):
    """Scene -> object class with a linear head on the pooled deepest encoder stage. Hands on the encoder."""

    def __init__(self, num_classes: int, encoder: str = DEFAULT_ENCODER, in_channels: int = 3,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS, lr: float = 2e-3,
                 weight_decay: float = 1e-4, input_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 input_std: Sequence[float] = (0.5, 0.5, 0.5), schedule: str = "constant") -> None:
        super().__init__()
        self.save_hyperparameters()
        self._setup_common(input_mean, input_std)
        unet = build_unet(encoder, 2, in_channels, decoder_channels)
        self.net = nn.Module()
        self.net.encoder = unet.encoder  # the decoder is not trained here, so it is not kept
        self.head = nn.Linear(unet.encoder.out_channels[-1], num_classes)

    def transferable_parts(self) -> dict[str, nn.Module]:
        return {"encoder": self.net.encoder}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_features(self.net.encoder, self.normalise(x)))

    def _step(self, batch: Any, prefix: str) -> torch.Tensor:
        x, _, label = unpack_batch(batch)
        if label is None:
            raise ValueError("classification pretraining needs class labels in the batch. Fix: use a datamodule "
                             "whose batches carry a 'label' (SceneDataModule does)")
        logits = self(x)
        loss = F.cross_entropy(logits, label.long())
        acc = (logits.argmax(1) == label).float().mean()
        self.log(f"{prefix}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)
        self.log(f"{prefix}/acc", acc, on_step=False, on_epoch=True, prog_bar=prefix == "val", batch_size=len(x),
                 sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")


class ReconstructionPretext(PretextModule):
    """A masked, denoising U-Net autoencoder (sigmoid output, MSE to the clean image). Hands on encoder + decoder.

    The input has ``mask_ratio`` of its ``patch_size`` x ``patch_size`` patches replaced by grey and Gaussian
    noise of std ``noise_std`` added; the loss is over every pixel of the clean image. Copying the input through
    the shallow skip connection leaves the masked patches grey and the noise in: the network must use context.
    """

    def __init__(self, encoder: str = DEFAULT_ENCODER, in_channels: int = 3,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS, lr: float = 2e-3,
                 weight_decay: float = 1e-4, input_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 input_std: Sequence[float] = (0.5, 0.5, 0.5), mask_ratio: float = 0.5, patch_size: int = 8,
                 noise_std: float = 0.1, schedule: str = "constant", seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._setup_common(input_mean, input_std)
        if not 0.0 <= mask_ratio < 1.0 or patch_size < 1 or noise_std < 0:
            raise ValueError(f"mask_ratio={mask_ratio} must lie in [0, 1), patch_size={patch_size} be >= 1 and "
                             f"noise_std={noise_std} >= 0. Fix: e.g. mask_ratio=0.5, patch_size=8, noise_std=0.1")
        self.net = build_unet(encoder, in_channels, in_channels, decoder_channels)
        self._generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(self.normalise(x)))

    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mask ``mask_ratio`` of the patches with grey, then add Gaussian noise (values stay in [0, 1])."""
        n, _, h, w = x.shape
        size = self.hparams.patch_size
        rows, cols = -(-h // size), -(-w // size)
        keep = (torch.rand(n, 1, rows, cols, generator=generator) >= self.hparams.mask_ratio).float()
        keep = keep.repeat_interleave(size, 2).repeat_interleave(size, 3)[:, :, :h, :w].to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device) * self.hparams.noise_std
        return (x * keep + 0.5 * (1 - keep) + noise).clamp(0, 1)

    def _step(self, batch: Any, prefix: str, generator: torch.Generator) -> torch.Tensor:
        x, _, _ = unpack_batch(batch)
        loss = F.mse_loss(self(self.corrupt(x, generator)), x)
        self.log(f"{prefix}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self._generator)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", validation_generator(batch_idx, self.hparams.seed))


# ----- contrastive + self-reconstruction -------------------------------------------------------------

def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy over 2N views (positives: the other view)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma replicated over the channels (N, C, H, W) -> (N, C, H, W)."""
    if x.shape[1] == 1:
        return x
    luma = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return luma.expand(-1, x.shape[1], -1, -1)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, min_scale: float = 0.4,
            jitter: float = 0.4, gray_p: float = 0.2) -> torch.Tensor:
    """A SimCLR view, batched on the tensor's device: random resized crop, flip, colour jitter, grayscale."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(dev)

    scale = min_scale + (1 - min_scale) * rand(n)
    side = scale.sqrt()
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0).to(dev)
    tx = (1 - side) * (2 * rand(n) - 1)
    ty = (1 - side) * (2 * rand(n) - 1)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness = 1 + jitter * (2 * rand(n, 1, 1, 1) - 1)
    contrast = 1 + jitter * (2 * rand(n, 1, 1, 1) - 1)
    saturation = 1 + jitter * (2 * rand(n, 1, 1, 1) - 1)
    v = v * brightness
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * contrast + mean
    g = grayscale(v)
    v = (v - g) * saturation + g
    to_gray = (rand(n, 1, 1, 1) < gray_p).float()
    v = to_gray * grayscale(v) + (1 - to_gray) * v
    return v.clamp(0, 1)


def corrupt(x: torch.Tensor, task: str, generator: torch.Generator | None = None, noise_std: float = 0.2,
            hole_fraction: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch for one self-reconstruction task; return (input, loss weight map (N, 1, H, W)).

    denoise: add Gaussian noise, loss everywhere; inpaint: fill a random square (``hole_fraction`` of the
    side) with grey, loss mostly inside the hole (weight 1 inside, 0.1 outside); colourise: grayscale
    input, loss everywhere.
    """
    n, _, h, w = x.shape
    ones = torch.ones(n, 1, h, w, device=x.device)
    if task == "denoise":
        noise = torch.randn(x.shape, generator=generator).to(x.device) * noise_std
        return (x + noise).clamp(0, 1), ones
    if task == "colourise":
        return grayscale(x), ones
    if task == "inpaint":
        side_h, side_w = max(1, int(h * hole_fraction)), max(1, int(w * hole_fraction))
        top = (torch.rand(n, generator=generator) * (h - side_h + 1)).long()
        left = (torch.rand(n, generator=generator) * (w - side_w + 1)).long()
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        hole = ((rows >= top.view(n, 1, 1)) & (rows < (top + side_h).view(n, 1, 1))
                & (cols >= left.view(n, 1, 1)) & (cols < (left + side_w).view(n, 1, 1)))
        hole = hole.unsqueeze(1).to(x.device).float()
        return x * (1 - hole) + 0.5 * hole, 0.1 + 0.9 * hole
    raise ValueError(f'unknown corruption "{task}". Fix: use one of {", ".join(CORRUPTIONS)}')


class ContrastiveReconstructionPretext(PretextModule):
    """Contrastive self-supervision combined with several self-reconstruction tasks (no labels).

    Per batch: two augmented views of every image; both views of image i are corrupted by task i mod T
    (with independent noise / holes), so every task occurs in every batch. Giving a pair the same kind of
    corruption matters: with different kinds, the pooled features first cluster by corruption type, the
    negatives that share the anchor's corruption look closer than its positive, and NT-Xent starts above
    chance and barely moves on small data (measured).
    - contrastive: NT-Xent between projections (2-layer MLP) of the pooled deepest encoder stage of the two
      corrupted views: the encoder learns features invariant to augmentation and corruption;
    - self-reconstruction: the shared U-Net decoder feeds one 3x3-conv head per task that restores the clean
      view (denoising, inpainting, colourisation), weighted MSE.
    Loss = ``contrastive_weight`` x NT-Xent + ``reconstruction_weight`` x mean reconstruction loss.
    Augmentation (``crop_min_scale``, ``colour_jitter``, ``grayscale_p``) is milder than SimCLR's ImageNet
    recipe: the views are also corrupted, and small images lose their identity under both at full strength.
    Hands on the encoder and the shared decoder (the task heads stay behind).
    """

    def __init__(self, encoder: str = DEFAULT_ENCODER, in_channels: int = 3,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS, tasks: Sequence[str] = CORRUPTIONS,
                 temperature: float = 0.2, projection_dim: int = 64, contrastive_weight: float = 1.0,
                 reconstruction_weight: float = 10.0, lr: float = 2e-3, weight_decay: float = 1e-4,
                 input_mean: Sequence[float] = (0.5, 0.5, 0.5), input_std: Sequence[float] = (0.5, 0.5, 0.5),
                 crop_min_scale: float = 0.5, colour_jitter: float = 0.3, grayscale_p: float = 0.1,
                 noise_std: float = 0.15, hole_fraction: float = 0.3, seed: int = 0,
                 schedule: str = "constant") -> None:
        super().__init__()
        self.save_hyperparameters()
        self._setup_common(input_mean, input_std)
        unknown = [t for t in tasks if t not in CORRUPTIONS]
        if unknown or not tasks:
            raise ValueError(f"unknown or no self-reconstruction tasks {unknown or list(tasks)}. "
                             f"Fix: choose from {', '.join(CORRUPTIONS)}")
        self.net = build_unet(encoder, in_channels, in_channels, decoder_channels)
        self.net.segmentation_head = nn.Identity()  # replaced by one head per task
        width = self.net.encoder.out_channels[-1]
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))
        self.heads = nn.ModuleDict({t: nn.Conv2d(decoder_channels[-1], in_channels, 3, padding=1) for t in tasks})
        self._generator = torch.Generator().manual_seed(seed)

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled deepest encoder features, decoder output) for [0, 1] images."""
        features = self.net.encoder(self.normalise(x))
        decoded = self.net.decoder(features)
        return features[-1].mean(dim=(2, 3)), decoded

    def losses(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The objective's parts on one batch of clean [0, 1] images (random draws from ``generator``, by default
        the module's own training generator)."""
        generator = generator or self._generator
        tasks = list(self.hparams.tasks)
        n = x.shape[0]
        hp = self.hparams
        views = [augment(x, generator, hp.crop_min_scale, hp.colour_jitter, hp.grayscale_p) for _ in range(2)]
        inputs, weights, assigned = [], [], []
        for view in views:
            task_of = [i % len(tasks) for i in range(n)]
            corrupted = view.clone()
            weight = torch.ones(n, 1, *x.shape[2:], device=x.device)
            for t, task in enumerate(tasks):
                idx = [i for i in range(n) if task_of[i] == t]
                if idx:
                    corrupted[idx], weight[idx] = corrupt(view[idx], task, generator, hp.noise_std,
                                                          hp.hole_fraction)
            inputs.append(corrupted)
            weights.append(weight)
            assigned.append(task_of)
        pooled, decoded = self.encode_decode(torch.cat(inputs))
        z = self.projector(pooled)
        contrastive = nt_xent(z[:n], z[n:], self.hparams.temperature)
        clean = torch.cat(views)
        weight = torch.cat(weights)
        task_of = assigned[0] + assigned[1]
        parts: dict[str, torch.Tensor] = {}
        for t, task in enumerate(tasks):
            idx = [i for i in range(2 * n) if task_of[i] == t]
            if not idx:
                continue
            restored = torch.sigmoid(self.heads[task](decoded[idx]))
            err = (restored - clean[idx]) ** 2 * weight[idx]
            parts[task] = err.sum() / (weight[idx].sum() * clean.shape[1])
        reconstruction = torch.stack(list(parts.values())).mean()
        total = self.hparams.contrastive_weight * contrastive + self.hparams.reconstruction_weight * reconstruction
        return {"loss": total, "ntxent": contrastive, "reconstruction": reconstruction, **parts}

    def _step(self, batch: Any, prefix: str, generator: torch.Generator | None = None) -> torch.Tensor:
        x, _, _ = unpack_batch(batch)
        parts = self.losses(x, generator)
        for name, value in parts.items():
            self.log(f"{prefix}/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss",
                     batch_size=len(x), sync_dist=True)
        return parts["loss"]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", validation_generator(batch_idx, self.hparams.seed))


SOURCE_TASKS = ("classification", "segmentation", "reconstruction", "contrastive")


def build_source_module(task: str, **kwargs: Any) -> L.LightningModule:
    """The module for one source task (``SOURCE_TASKS``); ``kwargs`` go to its constructor."""
    if task == "classification":
        return ClassificationPretext(**kwargs)
    if task == "segmentation":
        return SegmentationModule(**kwargs)
    if task == "reconstruction":
        return ReconstructionPretext(**kwargs)
    if task == "contrastive":
        return ContrastiveReconstructionPretext(**kwargs)
    from analysis.errors import did_you_mean

    raise ValueError(f'unknown source task "{task}".{did_you_mean(task, SOURCE_TASKS)} '
                     f'Fix: use one of {", ".join(SOURCE_TASKS)}')


def export_parts(module: L.LightningModule, path, meta: dict) -> Any:
    """Save what ``module`` hands on (its ``transferable_parts()``) as a parts file for target runs."""
    return save_parts(path, module.transferable_parts(), meta)
