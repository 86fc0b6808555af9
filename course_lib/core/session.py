"""A notebook's setup cell: `course_lib.start()` sets the profile, silences noise, seeds, and names the runtime."""

from __future__ import annotations

from dataclasses import dataclass

from course_lib import __version__
from course_lib.core.colab import configure
from course_lib.core.models import describe_source
from course_lib.core.runtime import Device, detect_device, in_colab, quiet, seed_everything, set_profile


@dataclass(frozen=True)
class Session:
    """What a notebook's setup cell found: the profile, the device and the seed."""

    profile: str
    device: Device
    seed: int


def start(profile: str | None = None, seed: int = 0, model: str = "default") -> Session:
    """A notebook's setup: set the profile, silence noise, seed, and print one line about the runtime."""

    quiet()
    chosen = set_profile(profile)
    seed_everything(seed)
    device = detect_device()
    if in_colab():  # the hub is reachable there: pick the largest course model the GPU fits

        model = configure(model)
    print(f"course_lib {__version__} | profile {chosen} | {device} | model {describe_source(model)}")
    return Session(profile=chosen, device=device, seed=seed)
