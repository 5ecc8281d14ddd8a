"""Pick the torch device the learner trains and encodes on."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    # torch builds without the MPS backend lack `torch.backends.mps.is_available` on some versions.
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(preference: str = "auto") -> torch.device:
    """Turn a configured device name into a usable `torch.device`.

    Parameters
    ----------
    preference : str
        ``"auto"`` picks CUDA, then MPS, then CPU. ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"``
        are explicit overrides and are never silently replaced by another device.

    Raises
    ------
    ValueError
        The name is unknown, or names a device this machine does not have (asking for the GPU on a
        CPU-only box must fail loudly rather than train 50x slower than planned).
    """
    name = preference.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"unknown device {preference!r}; expected one of {', '.join(DEVICE_CHOICES)} or 'cuda:N'"
        ) from exc

    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {preference!r} requested but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {preference!r} requested but only {count} CUDA device(s) are present")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {preference!r} requested but MPS is not available on this machine")
        return device
    raise ValueError(
        f"unsupported device {preference!r}; expected one of {', '.join(DEVICE_CHOICES)} or 'cuda:N'"
    )
