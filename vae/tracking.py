"""TensorBoard logging: scalars per epoch and one HParams row per run, written by the run's own writer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


class Tracker:
    """Thin wrapper over SummaryWriter writing into the run directory itself."""

    def __init__(
        self, log_dir: str | os.PathLike, purge_step: int | None = None, enabled: bool = True
    ) -> None:
        """``purge_step``: TensorBoard hides the events of this step and later that earlier writers of
        the same run wrote (a resumed run rewrites them). ``enabled=False`` (the data-parallel ranks but
        rank 0) writes nothing: scalars, flush and close do nothing."""
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step) if enabled else None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, float], step: int) -> None:
        """One HParams row in this run (``add_hparams`` would write a second, duplicate run), at ``step``
        (the last epoch) so that a resumed run's purge replaces it rather than doubling it.

        The metrics' values are read from this run's scalars of the same tags: log them with :meth:`scalars`.
        """
        clean = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparam_dict.items()}
        for summary in hparams(clean, dict(metric_dict)):
            self.writer.file_writer.add_summary(summary, step)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """A matplotlib figure as an image (the figure stays open for the caller to save or close)."""
        self.writer.add_figure(tag, fig, step, close=False)

    def embedding(self, tag: str, mat: Any, labels: list, images: Any | None, step: int) -> None:
        """Points for the projector tab; ``images`` are NCHW thumbnails or None."""
        self.writer.add_embedding(mat, metadata=labels, label_img=images, global_step=step, tag=tag)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
