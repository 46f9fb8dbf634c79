"""Build script for the C core, shmsem._core.

Everything declarative lives in pyproject.toml; this file exists only for the
extension module, whose flags depend on the environment:

* ``SHMSEM_SANITIZE=1`` builds with AddressSanitizer and UndefinedBehaviorSanitizer
  (run the interpreter with ``LD_PRELOAD`` of libasan, see .ci/run).
* ``SHMSEM_DEBUG=1`` builds without optimisation, with assertions.
"""

import os
import sys
from pathlib import Path

# Before anything else, setuptools included: its import already does
# platform-specific work.
if not sys.platform.startswith("linux"):
    sys.exit(
        "shmsem supports Linux only: it is built on System V IPC and futexes as "
        f"Linux provides them, and this platform is {sys.platform!r}. "
        "For POSIX shared memory elsewhere, use multiprocessing.shared_memory or posix_ipc."
    )

from setuptools import Extension, setup  # noqa: E402

here = Path(__file__).parent
csrc = Path("src", "shmsem", "csrc")
sources = sorted(str(p) for p in (here / csrc).glob("*.c"))
sources = [os.path.relpath(s, here) for s in sources]

version = {}
exec((here / "src" / "shmsem" / "_version.py").read_text(), version)

compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-fno-strict-aliasing"]
link_args = []
undef = []
if os.environ.get("SHMSEM_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined"]
    compile_args += san + ["-O1", "-g"]
    link_args += san
    undef.append("NDEBUG")
elif os.environ.get("SHMSEM_DEBUG") == "1":
    compile_args += ["-O0", "-g"]
    undef.append("NDEBUG")
else:
    compile_args += ["-O2"]

setup(
    ext_modules=[
        Extension(
            "shmsem._core",
            sources=sources,
            depends=[str(p) for p in csrc.glob("*.h")],
            define_macros=[("SHMSEM_VERSION", f'"{version["__version__"]}"')],
            undef_macros=undef,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
)
