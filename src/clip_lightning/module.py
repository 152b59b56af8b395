"""CLIPModule: the LightningModule that wraps both towers, their heads and the loss.

The module is built from plain config mappings (each with a ``_target_``) rather than from
ready-made objects, so ``CLIPModule.load_from_checkpoint(path)`` rebuilds the whole model from
the checkpoint alone -- no Hydra, no extra arguments -- through the same registry and checks as
a config (:mod:`clip_lightning.models.targets`, :mod:`clip_lightning.checkpoints`).

The file is one class and stays whole: Lightning's hooks (steps, optimizers, the sharding hook
and the checkpoint hooks) are read together, and each does its work through the helpers it
calls (``gradcache``, ``optim``, ``checkpoints``, ``metrics``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning.pytorch.utilities.types import OptimizerConfig, OptimizerLRSchedulerConfig
from PIL import Image
from torch.distributed._composable import replicate
from torch.distributed.fsdp import FSDPModule, fully_shard

from clip_lightning import embedding
from clip_lightning.checkpoints import (
    SETTINGS_KEY,
    describe_mismatch,
    model_arguments,
    read_checkpoint,
    settings_saved_in,
    weight_shaping_settings,
)
from clip_lightning.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
)
from clip_lightning.gradcache import grad_cache_backward
from clip_lightning.metrics import RetrievalRecall
from clip_lightning.models.freezing import count_parameters
from clip_lightning.models.lora import LoRAConfig, LoRASettings, add_lora
from clip_lightning.models.targets import Config, PartialConfig, build, check_arguments, plain
from clip_lightning.models.towers import build_towers
from clip_lightning.optim import OptimizerPart, describe_lrs, param_groups, split_layer_decay

#: Where a checkpoint keeps the tower configs its run started from (see ``on_save_checkpoint``).
START_KEY = "clip_lightning_pretrained_towers"


def _plain(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Plain containers (a DictConfig resolved) so checkpoints do not pickle OmegaConf."""
    return None if config is None else dict(plain(config))


class CLIPModule(L.LightningModule):
    """Image encoder + text encoder -> projection heads -> contrastive loss.

    Args:
        image_encoder, text_encoder: configs of :class:`~clip_lightning.models.ImageEncoder`
            and :class:`~clip_lightning.models.TextEncoder`.
        head: config of a projection head class; ``in_features`` and ``embed_dim`` are filled
            in here, one head per tower.
        loss: config of a loss from :mod:`clip_lightning.losses` (it owns the temperature).
        optimizer: a ``_partial_`` optimizer config; its ``lr`` applies to heads and loss.
            Its ``layer_decay`` (not an argument of the optimizer class) is the layer-wise LR
            decay of the towers (:mod:`clip_lightning.optim`).
        scheduler: a ``_partial_`` config called with ``optimizer`` and ``num_training_steps``.
        tower_lr: per-tower learning rates, keys ``image_encoder`` / ``text_encoder``.
        compile: ``torch.compile`` both encoders in place (state-dict keys are unchanged).
        grad_cache_chunk_size: embed the batch in chunks of this many pairs with GradCache
            (:mod:`clip_lightning.gradcache`): the loss still contrasts the whole batch, so a
            batch of 1024 fits in the memory of 128. ``None`` embeds the batch in one go.
        clip_grad_norm: gradient-norm clipping (both modes; ``trainer.gradient_clip_val``, if
            set, takes precedence in the default mode).
        grad_checkpointing: recompute the towers' activations in the backward pass instead of
            storing them: less memory for more compute. Each tower implements
            ``set_grad_checkpointing(enable)`` (timm's and HF's own switches underneath).
        lora: LoRA adapters (:mod:`clip_lightning.models.lora`): ``r`` (``None``: off),
            ``alpha``, ``dropout``, ``towers`` and ``target_modules``; the adapted towers'
            own weights are frozen.

    Every ``_target_`` in these configs must be registered in :mod:`~.models.targets`, and
    every argument has the type the constructor declares, so loading a checkpoint never runs
    code that the checkpoint names.
    """

    def __init__(
        self,
        image_encoder: Config,
        text_encoder: Config,
        head: Config,
        loss: Config,
        optimizer: OptimizerPart,
        scheduler: PartialConfig | None = None,
        embed_dim: int = 256,
        tower_lr: Mapping[str, float] | None = None,
        compile: bool = False,
        grad_cache_chunk_size: int | None = None,
        clip_grad_norm: float | None = 1.0,
        grad_checkpointing: bool = False,
        lora: LoRAConfig | None = None,
    ):
        super().__init__()
        parts: dict[str, Any] = {
            "image_encoder": _plain(image_encoder),
            "text_encoder": _plain(text_encoder),
            "head": _plain(head),
            "loss": _plain(loss),
            "optimizer": _plain(optimizer),
            "scheduler": _plain(scheduler),
        }
        # Before anything is built: only registered classes, with arguments of their types.
        lora = _plain(lora)
        check_arguments(CLIPModule, {**parts, "lora": lora}, "model")
        # Not logged: the train entry point logs the whole run config once.
        self.save_hyperparameters(
            {
                **parts,
                "embed_dim": embed_dim,
                "tower_lr": _plain(tower_lr) or {},
                "compile": compile,
                "grad_cache_chunk_size": grad_cache_chunk_size,
                "clip_grad_norm": clip_grad_norm,
                "grad_checkpointing": grad_checkpointing,
                "lora": lora,
            },
            logger=False,
        )
        # What the steps read back, typed (the hyperparameters keep the same, for checkpoints).
        self.tower_configs: dict[str, dict[str, Any]] = {
            name: parts[name] for name in ("image_encoder", "text_encoder")
        }
        self.optimizer_config: dict[str, Any] = parts["optimizer"]
        self.scheduler_config: dict[str, Any] | None = parts["scheduler"]
        self.tower_lr: dict[str, float] = _plain(tower_lr) or {}
        self.grad_cache_chunk_size = grad_cache_chunk_size
        self.clip_grad_norm = clip_grad_norm
        # GradCache runs several backward passes per step, which needs manual optimization.
        self.automatic_optimization = grad_cache_chunk_size is None
        self.image_encoder, self.text_encoder = build_towers(
            parts["image_encoder"], parts["text_encoder"]
        )
        self.image_head = build(
            parts["head"],
            "model.head",
            in_features=self.image_encoder.num_features,
            embed_dim=embed_dim,
        )
        self.text_head = build(
            parts["head"],
            "model.head",
            in_features=self.text_encoder.num_features,
            embed_dim=embed_dim,
        )
        self.loss = build(parts["loss"], "model.loss")
        self._init_loss_from_towers()
        self.lora = LoRASettings(**(lora or {}))
        add_lora(
            {"image_encoder": self.image_encoder, "text_encoder": self.text_encoder}, self.lora
        )
        if grad_checkpointing:
            self.image_encoder.set_grad_checkpointing(True)
            self.text_encoder.set_grad_checkpointing(True)
        if compile:
            self.image_encoder.compile()
            self.text_encoder.compile()
        self.val_retrieval = RetrievalRecall()
        self.test_retrieval = RetrievalRecall()
        # the tower configs a checkpoint this model was loaded from started with (see
        # on_save_checkpoint); None for a model built from its config
        self.pretrained_start: dict[str, dict[str, Any]] | None = None

    def _init_loss_from_towers(self) -> None:
        """Hand the loss a pretrained temperature when a tower carries one (open_clip, HF CLIP).

        A tower's ``init_logit_scale`` (log space) and ``init_logit_bias`` are floats or
        ``None``; the first tower that sets either wins. A checkpoint's state dict restores
        the trained values afterwards, so this only shapes a fresh start.
        """
        for tower in (self.image_encoder, self.text_encoder):
            if tower.init_logit_scale is not None or tower.init_logit_bias is not None:
                self.loss.init_from_pretrained(tower.init_logit_scale, tower.init_logit_bias)
                return

    # ----------------------------------------------------------------- embedding
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings for a preprocessed batch."""
        return F.normalize(self.image_head(self.image_encoder(images)), dim=-1)

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings for a tokenized batch."""
        return F.normalize(self.text_head(self.text_encoder(input_ids, attention_mask)), dim=-1)

    def encode_image(self, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Inference API: PIL images (or an already transformed batch) -> embeddings.

        Many images are better embedded with :func:`clip_lightning.embedding.embed_images`,
        which this calls: batched, in eval mode, float32 on the CPU.
        """
        return embedding.embed_images(self, images)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Inference API: captions -> embeddings, with :func:`~.embedding.embed_texts`."""
        return embedding.embed_texts(self, texts)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """``trainer.predict``: the embeddings of what the batch holds, ``images`` as ``image``
        and ``input_ids`` + ``attention_mask`` as ``text`` (``clip_lightning.embed``)."""
        embeddings = {}
        if "images" in batch:
            embeddings["image"] = self.embed_images(batch["images"])
        if "input_ids" in batch:
            embeddings["text"] = self.embed_texts(batch["input_ids"], batch["attention_mask"])
        return embeddings

    # ------------------------------------------------------------------ sharding
    def configure_model(self) -> None:
        """``trainer=fsdp`` (:class:`~clip_lightning.strategies.FullyShardedStrategy`): shard
        the parameters, gradients and optimizer state of each tower and head with FSDP2's
        ``fully_shard`` over the data-parallel ranks. Other strategies have no device mesh and
        leave the model as it is."""
        mesh = self.device_mesh
        if mesh is None or isinstance(self.image_encoder, FSDPModule):
            return  # not sharded, or sharded already (validate_before_fit's validation)
        if self.grad_cache_chunk_size is not None:
            raise ConfigError(
                "model.grad_cache_chunk_size is not supported with trainer=fsdp (its chunked "
                "backward passes need DDP's no_sync); use trainer=ddp, or unset it"
            )
        parts = [self.image_encoder, self.text_encoder, self.image_head, self.text_head]
        for part in parts:
            fully_shard(part, mesh=mesh["data_parallel"])
        # fully_shard takes no scalar parameter (the loss's logit_scale): the loss is replicated
        # as under DDP, its gradients averaged over all ranks
        replicate(self, ignored_modules=parts)

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        counts = {
            f"params/{name}_{kind}": float(n)
            for name, module in (
                ("image_encoder", self.image_encoder),
                ("text_encoder", self.text_encoder),
                ("total", self),
            )
            for kind, n in count_parameters(module).items()
        }
        for logger in self.loggers:
            logger.log_metrics(counts, step=0)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            image_embeddings = self.embed_images(batch["images"])
            text_embeddings = self.embed_texts(batch["input_ids"], batch["attention_mask"])
            loss = self.loss(image_embeddings, text_embeddings)
            self._raise_if_not_finite(loss)
        else:
            loss = self._grad_cache_step(batch)
        batch_size = batch["images"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logit_scale", self.loss.scale, batch_size=batch_size)
        return loss

    def on_train_epoch_end(self) -> None:
        # Persist the frozen text tower's feature cache (no-op without a cache_dir or news).
        if self.trainer.is_global_zero:
            self.text_encoder.save_feature_cache()

    def _raise_if_not_finite(self, loss: torch.Tensor) -> None:
        """Stop before a NaN/inf loss reaches the weights, pointing at the last good checkpoint."""
        if not torch.isfinite(loss):
            saved = self._last_saved_checkpoint()
            kept = (
                f"The last good checkpoint is {str(saved)!r}."
                if saved is not None
                else "No checkpoint was saved before it."
            )
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}; "
                f"lower optimizer.lr or use trainer.precision=bf16-mixed instead of 16-mixed. "
                f"{kept}"
            )

    def _last_saved_checkpoint(self) -> Path | None:
        """The newest checkpoint the trainer's checkpoint callback has on disk, if any."""
        callback = self._trainer.checkpoint_callback if self._trainer is not None else None
        if not isinstance(callback, ModelCheckpoint):
            return None
        candidates = [callback.last_model_path, callback.best_model_path]
        if callback.dirpath:
            candidates.append(str(Path(callback.dirpath) / "last.ckpt"))
        existing = [Path(c) for c in candidates if c and Path(c).is_file()]
        return max(existing, key=lambda p: p.stat().st_mtime) if existing else None

    def _grad_cache_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimizer step over the whole batch, embedded chunk by chunk (GradCache); under
        DDP the loss contrasts the global batch and gradients are all-reduced once."""
        strategy = self.trainer.strategy
        optimizer = self.optimizers()
        assert isinstance(optimizer, LightningOptimizer)  # configure_optimizers returns one
        assert self.grad_cache_chunk_size is not None  # manual optimization is GradCache's
        optimizer.zero_grad()
        loss = grad_cache_backward(
            self.embed_images,
            lambda tokens: self.embed_texts(tokens["input_ids"], tokens["attention_mask"]),
            self.loss,
            batch["images"],
            {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
            chunk_size=self.grad_cache_chunk_size,
            backward=self.manual_backward,
            no_sync=(
                strategy.block_backward_sync
                if isinstance(strategy, ParallelStrategy)
                else contextlib.nullcontext
            ),
        )
        self._raise_if_not_finite(loss)
        optimizer.step()  # clips in on_before_optimizer_step
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            assert not isinstance(scheduler, list)  # configure_optimizers returns at most one
            scheduler.step()
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning clips automatic steps itself (configure_gradient_clipping). A manual
        # (GradCache) step clips here: under 16-mixed the gradients are unscaled only now;
        # clipped before optimizer.step() they would be clipped at loss scale (~65536x).
        if not self.automatic_optimization and self.clip_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.clip_grad_norm)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.clip_grad_norm
        if clip:
            self.clip_gradients(optimizer, clip, gradient_clip_algorithm or "norm")

    # ---------------------------------------------------------------- evaluation
    def _retrieval_update(self, metric: RetrievalRecall, batch: dict[str, torch.Tensor]) -> None:
        metric.update(
            self.embed_images(batch["images"]),
            batch["image_ids"],
            self.embed_texts(batch["input_ids"], batch["attention_mask"]),
            batch["caption_ids"],
            batch["caption_image_ids"],
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._retrieval_update(self.val_retrieval, batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._retrieval_update(self.test_retrieval, batch)

    def _log_retrieval(self, metric: RetrievalRecall, prefix: str) -> None:
        results = metric.compute()
        metric.reset()
        self.log_dict({f"{prefix}/{k}": v.float() for k, v in results.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval(self.val_retrieval, "val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval(self.test_retrieval, "test")

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> OptimizerConfig | OptimizerLRSchedulerConfig:
        settings, layer_decay = split_layer_decay(self.optimizer_config)
        factory = build(settings, "model.optimizer", partial=True)
        keywords = factory.keywords  # a functools.partial
        groups = param_groups(
            towers={"image_encoder": self.image_encoder, "text_encoder": self.text_encoder},
            rest=self,
            tower_lr=self.tower_lr,
            lr=keywords.get("lr", 1e-3),
            weight_decay=keywords.get("weight_decay", 0.0),
            layer_decay=layer_decay,
        )
        if layer_decay is not None:
            rank_zero_info(f"layer-wise LR decay {layer_decay:g}: {describe_lrs(groups)}")
        optimizer = factory(groups)
        if self.scheduler_config is None:
            return {"optimizer": optimizer}
        scheduler = build(self.scheduler_config, "model.scheduler", partial=True)(
            optimizer=optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --------------------------------------------------------------- checkpoints
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]  # a subset of Lightning's call
        cls,
        checkpoint_path: str | Path,
        map_location: torch.device | str | None = None,
        **overrides: Any,
    ) -> CLIPModule:
        """Rebuild a model from its checkpoint alone, as data.

        The file is read by :func:`~clip_lightning.checkpoints.read_checkpoint` (tensors and
        plain data only; an interpolation is refused, never resolved) and its settings are
        checked by :func:`~clip_lightning.checkpoints.model_arguments` before anything is
        built. ``overrides`` replace saved settings (``embed_dim=64``); ``map_location`` moves
        the model (it is read onto the CPU). Unusable files raise a one-line
        :class:`CheckpointError`.
        """
        state = read_checkpoint(checkpoint_path)
        model = cls(**{**model_arguments(state, checkpoint_path, cls), **overrides})
        model.on_load_checkpoint(state)
        model.load_state_dict(state["state_dict"])
        return model if map_location is None else model.to(map_location)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Rebuild anywhere without downloading or the original model folders: each tower says
        # which of its config keys to override (weights are in the state dict).
        hparams = checkpoint["hyper_parameters"]
        hparams["image_encoder"] = {
            **hparams["image_encoder"],
            **self.image_encoder.checkpoint_config(),
        }
        hparams["text_encoder"] = {
            **hparams["text_encoder"],
            **self.text_encoder.checkpoint_config(),
        }
        # Lightning merges load-time overrides into "hyper_parameters"; this copy stays as saved.
        checkpoint[SETTINGS_KEY] = weight_shaping_settings(self.hparams)
        # The towers as the run built them (pretrained tag, file or hub id): WiSE-FT rebuilds
        # its pretrained start from these. A reloaded model passes on what it was loaded with.
        checkpoint[START_KEY] = self.pretrained_start or dict(self.tower_configs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.pretrained_start = checkpoint.get(START_KEY)
        # Runs before the state dict is loaded (also on resume): a mismatch gets one line.
        state = checkpoint.get("state_dict", {})
        own = self.state_dict()
        for key in [k for k in state if ".pooler." in k and k not in own]:
            del state[key]  # older checkpoints hold the unused pooler the text tower now drops
        problem = describe_mismatch(
            settings_saved_in(checkpoint), weight_shaping_settings(self.hparams), state, own
        )
        if problem is not None:
            raise CheckpointError(
                f"the checkpoint does not match this model: {problem}; load it with its own "
                "settings (CLIPModule.load_from_checkpoint(path) without overrides) or start "
                "a new run"
            )
