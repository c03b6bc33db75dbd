"""Multi-process training, the parts that need no second process: how every epoch is dealt out to the
ranks, the one-process special case of train/distributed.py, and what a run refuses.

The multi-process runs themselves (2 ranks on gloo) are in test_distributed_runs.py.
"""

from __future__ import annotations

import pytest
import torch
from cli_runs import TINY_RECIPE, run_cli, write_recipe

from lorafit.data.batches import batch_order, batches_per_epoch, sharded_batch_order
from lorafit.recipe.schema import TrainConfig
from lorafit.runs.rundir import RunDir
from lorafit.train.distributed import Dist, describe, launched_by_torchrun, session
from lorafit.train.loop import total_optimizer_steps

LENGTHS = [5 + (i * 7) % 23 for i in range(37)]


@pytest.mark.parametrize("mode", ["pack", "bucket", "pad"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_read_disjoint_parts_of_the_one_process_global_batches(mode, world):
    """Rank r of N with batch b reads, batch by batch, its part of what one process with batch N*b
    reads: together every example of the global batch once, every rank the same number of batches;
    a last global batch with fewer examples than ranks is dropped on every rank."""
    for epoch in range(3):
        one = batch_order(LENGTHS, 4 * world, seed=5, epoch=epoch, mode=mode, window=2)
        parts = [sharded_batch_order(LENGTHS, 4, 5, epoch, mode, 2, (rank, world)) for rank in range(world)]
        kept = [b for b in one if len(b) >= world]
        assert all(len(p) == len(kept) == batches_per_epoch(len(LENGTHS), 4, world) for p in parts)
        for step, global_batch in enumerate(kept):
            joined = [i for p in parts for i in p[step]]
            assert joined == global_batch  # disjoint, complete, in order
            assert max(len(p[step]) for p in parts) - min(len(p[step]) for p in parts) <= 1
    assert sharded_batch_order(LENGTHS, 4, 5, 0, "pack") == batch_order(LENGTHS, 4, 5, 0, "pack")


def test_epochs_differ_and_a_tail_smaller_than_the_ranks_is_dropped():
    a = sharded_batch_order(LENGTHS, 4, 5, 0, "pack", shard=(0, 2))
    b = sharded_batch_order(LENGTHS, 4, 5, 1, "pack", shard=(0, 2))
    assert a != b
    # 37 examples, global batch 8: 4 full batches and a tail of 5 (split 2 + 3); a tail of 1 is dropped
    assert batches_per_epoch(37, 4, 2) == 5 and batches_per_epoch(33, 4, 2) == 4 and batches_per_epoch(33, 4, 1) == 9
    config = TrainConfig(batch_size=4, grad_accum=2, epochs=2)
    assert total_optimizer_steps(33, config, world=2) == 4 and total_optimizer_steps(33, config) == 9


def test_one_process_is_the_special_case():
    """Outside torchrun: rank 0 of 1, no process group, collectives return their input."""
    assert not launched_by_torchrun()
    with session("ddp") as dist:
        assert (dist.rank, dist.world, dist.main, dist.sharded) == (0, 1, True, False)
        assert not torch.distributed.is_initialized()
        assert dist.sum([1.5, 2]) == [1.5, 2]
        assert dist.broadcast_object({"a": 1}) == {"a": 1} and dist.gather_objects(3) == [3]
        assert dist.rank_seed(7) == 7 and dist.my_share(3) == [0, 1, 2]
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.full((3,), 2.0)
        dist.sum_gradients([p])
        assert p.grad.tolist() == [2.0, 2.0, 2.0] and dist.all_reduced_bytes == 0


def test_the_log_line_states_the_global_batch():
    line = describe(Dist(rank=0, world=4, local_world=2, backend="gloo", threads=8), batch_size=4, grad_accum=2)
    assert "global batch 32 = 4 per rank x 4 ranks x 2 grad_accum" in line and "8 torch thread(s) each" in line


def test_resuming_with_another_number_of_ranks_is_refused(tmp_path, model_dir):
    """A checkpoint records how many ranks wrote it; another count is refused in one line naming it."""
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, TINY_RECIPE.replace("max_steps: 40", "max_steps: 5"))
    result = run_cli(["train", recipe, "-o", tmp_path / "run", "-q"])
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "run")
    path, snapshot = run.latest_checkpoint()
    assert "world_size" not in snapshot  # one process
    snapshot["world_size"] = 2
    torch.save(snapshot, path / "state.pt")
    result = run_cli(["train", "--resume", tmp_path / "run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {path}: checkpoint was written by 2 process(es); "
                                      "resume it with --nproc 2 (this run has 1)")


def test_fsdp_refuses_task_evaluation_up_front(tmp_path, model_dir, monkeypatch):
    """fsdp ranks cannot generate text apart; asking for it is one line before the model loads."""
    from lorafit.recipe import load_recipe
    from lorafit.train.setup import load_task
    from lorafit.workflows.train import check_distributed

    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", model_dir),
                         ["train.distributed=fsdp", "eval.at_end=true", "eval.every=5"])
    with pytest.raises(Exception, match=r"fsdp runs no task evaluation yet; set eval.every, eval.at_end off"):
        check_distributed(recipe, load_task(recipe), Dist(world=2, mode="fsdp"))
    check_distributed(recipe, load_task(recipe), Dist(world=2, mode="ddp"))  # ddp shares it out
