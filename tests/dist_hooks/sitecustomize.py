"""Test hooks for multi-process runs, loaded at interpreter start-up by every lorafit process a test
starts with this directory on PYTHONPATH (the launcher and each torchrun worker). Driven by env vars:

    LORAFIT_TEST_FAIL=RANK:STEP   the worker of that rank raises RuntimeError in its STEP-th AdamW step
    LORAFIT_TEST_WRITES=FILE      every safetensors / torch.save write appends "rank path" to FILE
"""

import os

_fail = os.environ.get("LORAFIT_TEST_FAIL")
_writes = os.environ.get("LORAFIT_TEST_WRITES")

if (_fail or _writes) and "RANK" in os.environ:
    import torch

    rank = os.environ["RANK"]
    if _fail and _fail.split(":")[0] == rank:
        fail_at = int(_fail.split(":")[1])
        real_step = torch.optim.AdamW.step
        calls = []

        def step(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == fail_at:
                raise RuntimeError(f"injected failure on rank {rank} at step {fail_at}")
            return real_step(self, *args, **kwargs)

        torch.optim.AdamW.step = step

    if _writes:
        import safetensors.torch

        def logged(fn):
            def write(obj, path, *args, **kwargs):
                with open(_writes, "a") as f:
                    f.write(f"{rank} {path}\n")
                return fn(obj, path, *args, **kwargs)

            return write

        safetensors.torch.save_file = logged(safetensors.torch.save_file)
        torch.save = logged(torch.save)
