"""Optimizers and learning-rate schedules.

An optimizer updates parameters *in place*: ``step(params, grads)`` takes two dicts keyed by
parameter name (``conv1.W``, ``fc2.b``, ... as returned by ``Network.params()`` and
``Network.grads()``) and keeps its per-parameter state (velocities, moment estimates) under the
same names, so the state of ``conv1.W`` is ``optimizer.state["conv1.W"]``.

The learning rate is the attribute ``lr``; the trainer sets it before every step from a schedule.
A schedule is a small callable ``schedule(step) -> lr`` of the 0-based optimisation step.

Weight decay is *decoupled* (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", the
AdamW of PyTorch): ``p -= lr * weight_decay * p`` separately from the gradient step, so Adam's
per-parameter scaling does not weaken it. It is applied to weight matrices and kernels only
(``ndim >= 2``), not to biases or batch-norm scales, which have no reason to shrink.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

OPTIMIZERS = ("sgd", "momentum", "adam")
# Peak learning rate and decoupled weight decay that work for each optimizer on the MNIST
# convnets (docs/TRAINING.md): plain and heavy-ball SGD take steps ~30x larger than Adam's.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.1, "adam": 3e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-3, "momentum": 5e-3, "adam": 1e-2}
SCHEDULES = ("constant", "step", "cosine", "onecycle")


class Optimizer:
    """Base class: the learning rate, decoupled weight decay and per-parameter ``state``.

    Subclasses name their per-parameter arrays (``slot_names``) and define ``_update_block``,
    the update of one block of a parameter. Updates run in place with no temporary arrays, in
    blocks of ``block_size`` elements, for two measured reasons (SimpleConvNet, fc1.W is
    4320 x 100 = 1.7 MB):

    - a fresh array per arithmetic operation meant multi-megabyte allocations and their page
      faults on every step, which cost more than the arithmetic (Adam 1.7 -> 1.1 ms per step);
    - an update is a dozen elementwise passes over the parameter, its gradient and its state;
      block by block (256 KiB per array, all of them fit in L2) each pass reads from cache
      instead of memory (Adam 1.1 -> 0.84 ms, momentum 0.47 -> 0.34 ms).
    """

    slot_names: tuple[str, ...] = ()
    block_size = 1 << 16  # elements

    def __init__(self, lr: float, weight_decay: float = 0.0):
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be a positive number, got {lr!r}")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"weight decay must be a non-negative number, got {weight_decay!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.steps = 0
        self._scratch_arrays: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update every array in ``params`` in place from the gradient of the same name."""
        self.update(params, grads, self.begin_step(params, grads))

    def begin_step(
        self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]
    ) -> list[tuple[str, int, int]]:
        """Check the gradients against the parameters, count the step and create any missing
        state. Returns the step's blocks ``(name, start, stop)`` (flat element offsets) for
        ``update``: all of them at once, or shared out among threads (blocks are independent;
        ``step`` is ``update(params, grads, begin_step(params, grads))``)."""
        if params.keys() != grads.keys():
            raise ValueError(
                f"parameters and gradients differ: {sorted(params.keys() ^ grads.keys())}"
            )
        self.steps += 1
        blocks = []
        for name, param in params.items():
            grad = grads[name]
            if grad is None:
                raise ValueError(f"no gradient for {name!r}: run backward() before step()")
            if np.shape(grad) != param.shape:
                raise ValueError(
                    f"gradient of {name!r} has shape {np.shape(grad)}, expected {param.shape}"
                )
            self._scratch(name, param)
            self._slot(name, param)
            # A parameter that cannot be viewed flat without a copy is one block, the whole.
            size = self.block_size if param.flags.c_contiguous else max(param.size, 1)
            blocks += [(name, i, min(i + size, param.size)) for i in range(0, param.size, size)]
        return blocks

    def update(
        self,
        params: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        blocks: list[tuple[str, int, int]],
    ) -> None:
        """Apply the step ``begin_step`` began to ``blocks`` (some or all of what it returned)."""
        arrays, current = {}, None
        for name, start, stop in blocks:
            param = params[name]
            if name != current:
                current = name
                decay = 1.0 - self.lr * self.weight_decay if param.ndim >= 2 else 1.0
                arrays = self._arrays(name, param, grads[name])
            block = arrays
            if param.flags.c_contiguous:
                block = {key: value[start:stop] for key, value in arrays.items()}
            if decay != 1.0:
                block["param"] *= decay
            self._update_block(**block)

    def _arrays(self, name: str, param: np.ndarray, grad: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays one parameter's update reads and writes; flat views when the parameter is
        C-contiguous (the gradient is copied only if it is not contiguous)."""
        arrays = {"param": param, "grad": grad, "scratch": self._scratch_arrays[name]}
        arrays.update(self.state.get(name, {}))
        if not param.flags.c_contiguous:
            return arrays
        return {key: value.reshape(-1) for key, value in arrays.items()}

    def _slot(self, name: str, param: np.ndarray) -> dict[str, np.ndarray]:
        """The per-parameter state arrays (zeros at first), kept in ``state[name]``."""
        if not self.slot_names:
            return {}
        slot = self.state.get(name)
        if slot is None:
            slot = self.state[name] = {key: np.zeros_like(param) for key in self.slot_names}
        return slot

    def _scratch(self, name: str, param: np.ndarray) -> np.ndarray:
        """A reusable array shaped like ``param``; its contents are garbage between uses."""
        scratch = self._scratch_arrays.get(name)
        if scratch is None or scratch.shape != param.shape or scratch.dtype != param.dtype:
            scratch = self._scratch_arrays[name] = np.empty_like(param)
        return scratch

    def _update_block(self, param, grad, scratch, **slot) -> None:
        """Update ``param`` in place from ``grad``; all arguments are equally shaped blocks of
        the parameter, its gradient, a scratch array and the ``slot_names`` state arrays."""
        raise NotImplementedError


class SGD(Optimizer):
    """Plain gradient descent: p -= lr * g."""

    def _update_block(self, param, grad, scratch) -> None:
        param -= np.multiply(grad, self.lr, out=scratch)


class Momentum(Optimizer):
    """Heavy-ball momentum in PyTorch's form: v = mu * v + g; p -= lr * v.

    Keeping the velocity in gradient units (not pre-multiplied by lr, as in the book) means a
    schedule that changes lr acts at once instead of through the accumulated velocity.
    """

    slot_names = ("velocity",)

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def _update_block(self, param, grad, scratch, velocity) -> None:
        velocity *= self.momentum
        velocity += grad
        param -= np.multiply(velocity, self.lr, out=scratch)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; with ``weight_decay`` it is AdamW.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    slot_names = ("m", "v")

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(lr, weight_decay)
        for what, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Adam {what} must be in [0, 1), got {value!r}")
        if not eps > 0:
            raise ValueError(f"Adam eps must be positive, got {eps!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update_block(self, param, grad, scratch, m, v) -> None:
        m *= self.beta1
        m += np.multiply(grad, 1.0 - self.beta1, out=scratch)
        v *= self.beta2
        np.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - self.beta2
        v += scratch
        t = self.steps
        # Fold both bias corrections into the step size and eps (no array for either).
        correction2 = math.sqrt(1.0 - self.beta2**t)
        step_size = self.lr * correction2 / (1.0 - self.beta1**t)
        denominator = np.sqrt(v, out=scratch)
        denominator += self.eps * correction2
        # scratch = -step_size * m / denominator, then one in-place add to the parameter.
        np.divide(m, denominator, out=scratch)
        scratch *= -step_size
        param += scratch


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0) -> Optimizer:
    """``sgd``, ``momentum`` (0.9) or ``adam`` (AdamW when weight_decay > 0)."""
    if name == "sgd":
        return SGD(lr, weight_decay=weight_decay)
    if name == "momentum":
        return Momentum(lr, weight_decay=weight_decay)
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


# --------------------------------------------------------------------------- schedules
Schedule = Callable[[int], float]


class ConstantSchedule:
    """lr(step) = lr."""

    def __init__(self, lr: float):
        self.lr = float(lr)

    def __call__(self, step: int) -> float:
        return self.lr


class StepSchedule:
    """Multiply lr by ``gamma`` every ``step_size`` steps: lr * gamma ** (step // step_size)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
        self.lr, self.step_size, self.gamma = float(lr), int(step_size), float(gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


class CosineSchedule:
    """Cosine annealing from ``lr`` at step 0 to ``min_lr`` at step ``total_steps``."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.lr, self.total_steps, self.min_lr = float(lr), int(total_steps), float(min_lr)

    def __call__(self, step: int) -> float:
        progress = min(step / self.total_steps, 1.0)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


class OneCycleSchedule:
    """Warm-up then cosine decay (Smith's one-cycle policy without the momentum cycle).

    The rate rises linearly from ``max_lr / start_divisor`` to ``max_lr`` over the first
    ``warmup_fraction`` of ``total_steps``, then follows a half cosine down to
    ``max_lr / final_divisor``. The warm-up keeps Adam's first, badly estimated steps small; the
    long low tail at the end is where most of the last tenths of a percent are won.

    The warm-up lasts at least ``min(min_warmup_steps, total_steps // 2)`` steps: what keeps the
    default recipe (momentum 0.9, peak 0.1) stable is a number of steps, not a fraction of the
    run. Measured on MNIST, SimpleConvNet, 3,000 images x 3 epochs (90 steps): a 20 % warm-up
    (18 steps) ended at 31.7 % test accuracy, a 50 % one at 94.7 %. Runs of 1,500 steps or more
    (the default 20 epochs on MNIST, 11,000 steps; the 0-vs-1 mlp, 1,540) keep the plain 20 %.
    """

    def __init__(
        self,
        max_lr: float,
        total_steps: int,
        warmup_fraction: float = 0.2,
        start_divisor: float = 25.0,
        final_divisor: float = 1e3,
        min_warmup_steps: int = 300,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = max(
            int(round(warmup_fraction * total_steps)), min(min_warmup_steps, total_steps // 2)
        )
        self.start_lr = self.max_lr / start_divisor
        self.final_lr = self.max_lr / final_divisor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_lr + (self.max_lr - self.start_lr) * step / self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return self.final_lr + 0.5 * (self.max_lr - self.final_lr) * (
            1.0 + math.cos(math.pi * progress)
        )


def make_schedule(name: str, lr: float, total_steps: int, steps_per_epoch: int) -> Schedule:
    """A schedule by name for a run of ``total_steps`` steps.

    ``constant``; ``step``: lr / 10 after each third of the run (on epoch boundaries);
    ``cosine``: cosine from lr to 0; ``onecycle``: 20 % linear warm-up from lr / 25 (at least
    300 steps, at most half the run), then cosine down to lr / 1000.
    """
    if name == "constant":
        return ConstantSchedule(lr)
    if name == "step":
        epochs = max(total_steps // max(steps_per_epoch, 1), 1)
        return StepSchedule(lr, step_size=max(epochs // 3, 1) * steps_per_epoch, gamma=0.1)
    if name == "cosine":
        return CosineSchedule(lr, total_steps)
    if name == "onecycle":
        return OneCycleSchedule(lr, total_steps)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
