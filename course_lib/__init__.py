"""course_lib: the tested code behind the fine-tuning course's notebooks, one subpackage per module.

core (runtime, setup, models, the course task), data (01), lora (02), qlora (03), training (04), evaluation (05),
deployment (06), scaling (07), fast (the GPU fast path, used by training), instructor (the `course` command,
release and grading).
"""

__version__ = "0.1.0"

import logging as _logging  # noqa: E402

# bitsandbytes logs at import, on CPUs with AVX-512 bf16, that it could not fetch an optional kernel from the Hub and
# that trust_remote_code would allow it. The course runs offline and never trusts remote code, and peft imports
# bitsandbytes in a notebook's imports, before course_lib.start() can quiet it: so here, at `import course_lib`.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)

from course_lib.core.runtime import get_profile, pick  # noqa: E402  (the version must exist first)
from course_lib.core.session import start  # noqa: E402

__all__ = ["__version__", "get_profile", "pick", "start"]
