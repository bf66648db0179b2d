"""The sync Swarm inside a real Jupyter kernel (which already runs an event loop)."""

from __future__ import annotations

import nbformat
import psutil
import pytest
from nbclient import NotebookClient


def cell(source: str):
    return nbformat.v4.new_code_cell(source)


@pytest.mark.timeout(120)
def test_sync_swarm_runs_inside_a_jupyter_kernel_and_leaves_no_runner(tmp_path):
    db = tmp_path / "nb.db"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        cell("import asyncio, timmy\n"
             "asyncio.get_running_loop()  # the kernel's own loop is running"),
        cell(f"swarm = timmy.Swarm('sqlite:///{db}', seed=1, task_seconds=0)\n"
             "agents = swarm.spawn_all()\n"
             "print('pids', *[a.pid for a in agents])"),
        cell("done = swarm.run(['fix the bug in the api client', 'write a blog article'],\n"
             "                 timeout=30, progress=True)\n"
             "print([(t.status, t.assigned_agent) for t in done])"),
        cell("swarm.close()\nprint('closed')"),
    ]
    client = NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
               for c in nb.cells]
    pids = [int(p) for p in outputs[1].split()[1:]]
    assert len(pids) == 9
    assert "('completed', 'forge-1')" in outputs[2] and "('completed', 'quill-1')" in outputs[2]
    # the progress bar is a widget (or text) shown under the cell that ran
    assert any(o.output_type in ("display_data", "stream") for o in nb.cells[2].outputs)
    assert "closed" in outputs[3]
    _gone, alive = psutil.wait_procs([p for p in map(_proc, pids) if p], timeout=5)
    assert alive == []


def _proc(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
