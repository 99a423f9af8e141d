"""Execute a notebook headless: papermill's own command line, with the kernel on IPC sockets instead of TCP.

Over TCP (papermill's default) ipykernel starts with a warning that everything "is sent in plain text ... and is
susceptible to eavesdropping": its sockets listen on 127.0.0.1, which every local user can reach. IPC sockets
are files in Jupyter's runtime folder, which only this user can open, so the cause of the warning is gone
rather than the warning hidden. `make run` and `make study` run notebooks through this, and so do the tests.

    python -m mlp.notebook notebooks/fashion_mnist_mlp.ipynb out.ipynb -p epochs 3    # papermill's arguments
"""
from __future__ import annotations

from jupyter_client.manager import AsyncKernelManager
from papermill.engines import NBClientEngine, papermill_engines
from traitlets import CaselessStrEnum


class IPCKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, with IPC transport by default."""
    transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)


class IPCEngine(NBClientEngine):
    """papermill's nbclient engine, starting its kernels with `IPCKernelManager`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        kwargs.setdefault("kernel_manager_class", IPCKernelManager)
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register("ipc", IPCEngine)


def execute(*args, **kwargs):
    """papermill.execute_notebook on the IPC engine."""
    import papermill
    return papermill.execute_notebook(*args, engine_name="ipc", **kwargs)


if __name__ == "__main__":
    from papermill.cli import papermill as cli
    papermill_engines.register(None, IPCEngine)  # the engine papermill's command line uses unless told
    cli()
