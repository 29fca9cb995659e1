"""Adam as one call of torch's fused kernel per step, without torch.optim's start-up and per-step costs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# The fused kernel's devices; elsewhere (and for mixed devices or dtypes) make_optimizer uses torch.optim.
FUSED_DEVICES = ("cpu", "cuda")


def fused_adam_supported(params: list[torch.Tensor]) -> bool:
    """Whether FusedAdam can update ``params``: this torch has the kernel, and the parameters share one
    floating dtype and one device of a type the kernel runs on."""
    return (
        hasattr(torch, "_fused_adam_")
        and len(params) > 0
        and len({(p.device, p.dtype) for p in params}) == 1
        and params[0].device.type in FUSED_DEVICES
        and params[0].dtype.is_floating_point
    )


class FusedAdam:
    """Adam (Kingma and Ba, 2015) computing exactly what ``torch.optim.Adam(params, lr, fused=True)`` does,
    bit for bit, with the same state_dict, so a checkpoint of either loads into the other.

    torch.optim imports torch._dynamo when an optimizer is first built and stepped (about 1.4 s on this
    project's CPU machine, most of a small run's start-up) and spends about 0.3 ms of Python per step
    around the kernel; this class does neither. Parameters without a gradient are skipped, and their state
    is created on their first gradient, as torch.optim does.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not fused_adam_supported(self.params):
            raise ValueError("FusedAdam needs parameters of one floating dtype on one CPU or CUDA device")
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def _state(self, i: int) -> dict[str, torch.Tensor]:
        if i not in self.state:
            p = self.params[i]
            self.state[i] = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        return self.state[i]

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        states = [self._state(i) for i in live]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [self.params[i] for i in live],
            [self.params[i].grad for i in live],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Adam's format: per-parameter state by index and one parameter group."""
        group = {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": 0,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": True,
            "decoupled_weight_decay": False,
            "params": list(range(len(self.params))),
        }
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this class or of torch.optim.Adam (one group, the same parameters)."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(
                f"the optimizer state is for {sum(len(g['params']) for g in groups)} parameters in "
                f"{len(groups)} group(s), this model has {len(self.params)} in one"
            )
        group = groups[0]
        self.lr, self.betas, self.eps = group["lr"], tuple(group["betas"]), group["eps"]
        self.state = {}
        for key, saved in state_dict["state"].items():
            i = int(key)
            p = self.params[i]
            for name in ("exp_avg", "exp_avg_sq"):
                if saved[name].shape != p.shape:
                    raise ValueError(
                        f"optimizer state {name} of parameter {i} has shape "
                        f"{tuple(saved[name].shape)}, the parameter {tuple(p.shape)}"
                    )
            self.state[i] = {
                "step": torch.as_tensor(saved["step"], dtype=torch.float32).to(p.device).clone(),
                "exp_avg": saved["exp_avg"].to(p).clone(),
                "exp_avg_sq": saved["exp_avg_sq"].to(p).clone(),
            }
