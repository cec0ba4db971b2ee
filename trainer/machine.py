"""Where a run happened, recorded with its figures so that times from different machines are not compared blindly."""
from __future__ import annotations

import os
import platform
from typing import Any

import torch

from indexer.encoder import bf16_in_hardware


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows ("" on some systems)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch on ("AVX2", "AVX512", ...) and whether it has bfloat16 in
    hardware: runs on two machines called "AMD EPYC" differ by tens of times under --bf16."""
    bf16 = {True: "native", False: "emulated", None: "unknown"}[bf16_in_hardware("cpu")]
    return f"{torch.backends.cpu.get_cpu_capability()}, bfloat16 {bf16}"


def machine() -> dict[str, Any]:
    """The platform, CPU, torch's threads and version, and the GPU if there is one."""
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_capability": cpu_capability(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
