"""Device choice shared by the library, the CLI and the app."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """Devices this machine can run on, best first (cuda, mps, cpu)."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def default_device() -> str:
    return available_devices()[0]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a user's device string into a torch.device, with a clear error for one not present.

    `model.to("cuda")` on a CPU build corrupts a TransformerLens model's device setting, so this is
    checked before anything is moved.
    """
    if device is None or device == "" or device == "auto":
        return torch.device(default_device())
    dev = torch.device(device)
    if dev.type not in available_devices():
        raise ValueError(
            f"device {str(device)!r} is not available here; choose one of {available_devices()}"
        )
    return dev


def device_summary(device: str | torch.device) -> dict:
    """What the sidebar shows: the device, and its memory on a GPU."""
    dev = torch.device(device)
    info: dict = {"device": str(dev)}
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        free, total = torch.cuda.mem_get_info(idx)
        info.update(name=props.name, memory_total_gib=total / 2**30, memory_free_gib=free / 2**30)
    return info
