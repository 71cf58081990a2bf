"""``detr_plus.engine.launch.launch`` under ``torchrun``: torchrun starts the processes and sets RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT; each process must join that group (not
spawn its own) and see detectron2's ranks as torchrun assigned them. The two-"machine" run of
train_net.py (``--num-machines 2``) is in test_training.py."""
import json
import subprocess
import sys

from detr_plus.engine.launch import _free_port

SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from detectron2.utils import comm
from detr_plus.engine.launch import launch


def report(path):
    total = torch.tensor([comm.get_rank() + 1.0])
    dist.all_reduce(total)  # 1 + 2 + ... over the group torchrun built
    with open(f"{path}.{comm.get_rank()}", "w") as f:
        json.dump({"rank": comm.get_rank(), "world": comm.get_world_size(), "local_rank": comm.get_local_rank(),
                   "local_size": comm.get_local_size(), "sum": total.item()}, f)


# The arguments torchrun users keep from the single-machine command are ignored under torchrun.
launch(report, 1, num_machines=1, machine_rank=0, dist_url="auto", args=(sys.argv[1],))
"""


def test_launch_joins_the_process_group_that_torchrun_starts(tmp_path):
    """``torchrun --nnodes 2 --nproc-per-node 1`` started as two commands, one per "machine" (node
    rank 0 and 1, rendezvous over loopback): each process runs the main function once, with global
    ranks 0 and 1, one local process per machine, and an all-reduce over both (1 + 2 = 3)."""
    script = tmp_path / "report.py"
    script.write_text(SCRIPT)
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               str(script), str(tmp_path / "out")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    reports = sorted((json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)), key=lambda r: r["rank"])
    assert reports == [{"rank": r, "world": 2, "local_rank": 0, "local_size": 1, "sum": 3.0} for r in (0, 1)]
    assert not (tmp_path / "out.2").exists()
