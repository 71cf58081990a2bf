"""Multi-process launch that also works on CPU (gloo).

detectron2 v0.6's ``launch`` asserts CUDA for more than one process and hard-codes NCCL
(engine/launch.py:95,99), and ``create_ddp_model`` forces ``device_ids`` (engine/defaults.py:72-74).
"""
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def launch(main_func, num_processes_per_machine, num_machines=1, machine_rank=0, dist_url="auto", args=(), timeout_minutes=30):
    """Run ``main_func(*args)`` in ``num_processes_per_machine * num_machines`` processes (one per GPU,
    or CPU processes with gloo when CUDA is unavailable); a single process runs it directly.

    Under ``torchrun`` (which starts the processes itself and says so in ``LOCAL_WORLD_SIZE``, ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) this process is one of them: it joins through
    those variables and the ``--num-gpus / --num-machines / --machine-rank / --dist-url`` arguments
    are ignored."""
    if "LOCAL_WORLD_SIZE" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        per_machine, rank = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["RANK"])
        return _worker(int(os.environ["LOCAL_RANK"]), main_func, int(os.environ["WORLD_SIZE"]), per_machine,
                       rank // per_machine, "env://", args, timeout_minutes)
    world_size = num_processes_per_machine * num_machines
    if world_size <= 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url=auto only works on one machine; pass --dist-url tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if torch.cuda.is_available() and num_processes_per_machine > torch.cuda.device_count():
        raise ValueError(f"--num-gpus {num_processes_per_machine} but only {torch.cuda.device_count()} CUDA devices")
    mp.start_processes(
        _worker, nprocs=num_processes_per_machine, daemon=False,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout_minutes),
    )


def _free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout_minutes):
    use_cuda = torch.cuda.is_available()
    global_rank = machine_rank * per_machine + local_rank
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=dist_url, world_size=world_size,
                            rank=global_rank, timeout=timedelta(minutes=timeout_minutes))
    if hasattr(comm, "create_local_process_group"):  # detectron2 >= 0.6 main
        comm.create_local_process_group(per_machine)
    else:
        for i in range(world_size // per_machine):
            group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    if use_cuda:
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    main_func(*args)
    # Leave together and close the process group: a process that exits with gloo's threads still up
    # can abort ("terminate called without an active exception").
    comm.synchronize()
    dist.destroy_process_group()


def create_ddp_model(model, **kwargs):
    """DDP on CUDA (device_ids=[local rank]) or CPU (no device_ids); the model itself when not distributed."""
    if comm.get_world_size() == 1:
        return model
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)
