"""course_lib: the tested code behind the fine-tuning course's notebooks."""

__version__ = "0.1.0"

from .runtime import get_profile, pick, start  # noqa: E402  (the version must exist first)

__all__ = ["__version__", "get_profile", "pick", "start"]
