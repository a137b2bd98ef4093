"""Where trials run: how many at once, and what each one gets.

On CPU, ``--jobs J`` splits this process's cores into J contiguous shares and pins each trial
process to one (XLA, OpenMP and LightGBM size their thread pools from the cores a process may
use), so J trials do not fight over the same cores. On GPUs each trial gets its own device
(``CUDA_VISIBLE_DEVICES``), ``trials_per_device`` at a time per device with its share of the
memory. On TPUs one trial at a time owns every chip (a TPU host's chips are not shared between
processes).

The platform is probed in a short child process, so the tuner itself never starts JAX (on a GPU
that would hold memory the trials need).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

from ecomjax.errors import warn

_PROBE = "import jax; d = jax.devices(); print(d[0].platform, len(d))"


@dataclass(frozen=True)
class Slot:
    """What one concurrently running trial may use."""

    index: int
    cores: tuple[int, ...] = ()  # CPU: the pinned cores
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.cores:
            return f"cores {','.join(map(str, self.cores))}"
        return ", ".join(f"{k}={v}" for k, v in self.env.items()) or "all devices"


def probe_platform() -> tuple[str, int]:
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"could not start JAX to see the devices: {last}")
    platform, count = out.stdout.split()[-2:]
    return platform, int(count)


def slots(jobs: int, trials_per_device: int = 1, platform: tuple[str, int] | None = None) -> list[Slot]:
    """The concurrent trial slots for ``jobs`` requested trials at a time."""
    name, count = platform or probe_platform()
    if name == "cpu":
        cores = sorted(os.sched_getaffinity(0))
        if jobs > len(cores):
            warn(f"--jobs {jobs} on {len(cores)} CPU cores: trials share cores")
            return [Slot(i, (cores[i % len(cores)],)) for i in range(jobs)]
        shares = [cores[len(cores) * i // jobs: len(cores) * (i + 1) // jobs] for i in range(jobs)]
        return [Slot(i, tuple(share)) for i, share in enumerate(shares)]
    if name == "gpu":
        capacity = count * trials_per_device
        if jobs > capacity:
            warn(f"--jobs {jobs} on {count} GPU(s) at {trials_per_device} trial(s) per device: running {capacity} "
                 "at a time (raise --trials-per-device to share a device)")
        fraction = f"{0.9 / trials_per_device:.3f}"
        return [Slot(i, env={"CUDA_VISIBLE_DEVICES": str(i // trials_per_device),
                             "XLA_PYTHON_CLIENT_MEM_FRACTION": fraction})
                for i in range(min(jobs, capacity))]
    if jobs > 1:
        warn(f"--jobs {jobs} on {name}: one trial at a time uses every chip")
    return [Slot(0)]


__all__ = ["Slot", "probe_platform", "slots"]
