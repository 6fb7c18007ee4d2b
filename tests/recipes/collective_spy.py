"""Run one recipe under torchrun with every engine-level collective spied: each call appends
"<op>:<device type>" to $SPY_OUT.<rank>. Used by test_collectives.py.

    python -m torch.distributed.run --nproc_per_node 2 collective_spy.py {sft,dpo} [key=value ...]
"""
import os
import sys

import torch.distributed as tdist


def spy(name):
    real = getattr(tdist, name)

    def wrapper(*args, **kwargs):
        tensors = [a for a in args if hasattr(a, "device")]
        tensors += [t for a in args if isinstance(a, list) for t in a if hasattr(t, "device")]
        if "device" in kwargs and kwargs["device"] is not None:  # object collectives
            tensors.append(type("T", (), {"device": kwargs["device"]})())
        with open(f"{os.environ['SPY_OUT']}.{os.environ['RANK']}", "a") as f:
            for t in tensors:
                f.write(f"{name}:{t.device.type}\n")
        return real(*args, **kwargs)

    setattr(tdist, name, wrapper)


for op in ("all_reduce", "broadcast", "broadcast_object_list", "all_gather_into_tensor", "reduce_scatter_tensor"):
    spy(op)

if __name__ == "__main__":
    recipe, args = sys.argv[1], sys.argv[2:]
    from ie_engine.engine import parallel
    module = __import__(f"ie_engine.recipes.{recipe}", fromlist=["main"])
    module.main(args)
    parallel.exit_process(0)
