"""The Lightning strategy behind ``trainer=fsdp``."""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy


class FullyShardedStrategy(ModelParallelStrategy):
    """FSDP2 data parallelism over every process of the job.

    Lightning's ``ModelParallelStrategy`` builds a 2-D device mesh for FSDP x tensor
    parallelism; its ``auto`` sizes make the data-parallel dimension the nodes only, so the
    devices of a node would all read the same batches. Here data parallelism spans every
    device of every node (tensor parallelism 1), as DDP's does: each rank reads its own share,
    and :meth:`CLIPModule.configure_model` shards over the ``data_parallel`` mesh dimension.
    """

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()
