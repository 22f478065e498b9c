"""Turn the `device` setting ("auto" | "cpu" | "cuda" | "cuda:N") into a torch.device."""

from __future__ import annotations

import torch


def pick_device(setting: str = "auto") -> torch.device:
    setting = setting.strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" or setting.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {setting!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use 'cpu' or 'auto'"
            )
        device = torch.device(setting)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {setting!r} was requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
        return device
    raise ValueError(f"unknown device setting {setting!r}: expected auto, cpu or cuda")
