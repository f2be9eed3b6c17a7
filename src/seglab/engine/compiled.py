"""``--compile``: a model run through ``torch.compile``, falling back to the eager model, with one warning, where
the model or the backend cannot be compiled (the errors only come on a call, so the fallback is per call)."""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("seglab")


class Compiled(nn.Module):
    """``model`` compiled by ``torch.compile``; its ``meta``, parameters and state are ``model``'s own (the state
    dict keys gain an ``eager.`` prefix: save ``eager``). After a call that fails to compile, it runs eagerly."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.eager = model
        self.meta = getattr(model, "meta", None)
        object.__setattr__(self, "compiled", torch.compile(model))  # not a submodule: no second copy of the keys
        self.failure: str | None = None  # why compiling failed, once it has

    def forward(self, *args, **kwargs):
        if self.failure is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # torch.compile's backends raise many kinds; the eager model still runs
                reason = (str(error).strip().splitlines() or [""])[0][:200]
                self.failure = f"{type(error).__name__}: {reason}"
                name = self.meta["model"] if self.meta else type(self.eager).__name__
                log.warning(f"seglab: torch.compile does not support {name} here ({self.failure}); running it "
                            f"without compiling")
        return self.eager(*args, **kwargs)
