"""Where a training step's work runs: in a fresh process under the local orchestrator, here everywhere else.

    res = run_training(train, base, records, config, out, mirror=mirror(...))

The local orchestrator runs the whole pipeline in one Python process, and training leaves it ~25 % slower for every
step after it (tuneline/fresh_process.py says why and what was measured), so the training steps (SFT, DPO, the
reward model) run in a process of their own there. Kubernetes and Kubeflow already give each step a pod, and a
checkpoint mirror saves ZenML artifacts from inside the training loop, which needs this process's step context:
both run the call here.
"""

from typing import Any, Callable, TypeVar

from zenml.client import Client

from tuneline.fresh_process import call_in_fresh_process

T = TypeVar("T")


def run_training(fn: Callable[..., T], *args: Any, mirror=None, **kwargs: Any) -> T:
    if mirror is None and Client().active_stack.orchestrator.flavor == "local":
        return call_in_fresh_process(fn, *args, mirror=None, **kwargs)
    return fn(*args, mirror=mirror, **kwargs)
