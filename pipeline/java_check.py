"""Check that a Java 17+ runtime is available for Spark, with an actionable error if not.

Runs standalone (`python3 pipeline/java_check.py`, used by `make setup`) and is called before a
local Spark session starts. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

MIN_JAVA_MAJOR = 17
INSTALL_HINT = (
    "Install a Java 17+ runtime (Debian/Ubuntu: `apt-get install -y openjdk-17-jre-headless`; "
    "macOS: `brew install openjdk@17`) or point JAVA_HOME at one."
)


def _java_binary() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = os.path.join(java_home, "bin", "java")
        if os.path.exists(candidate):
            return candidate
    return shutil.which("java")


def parse_java_major(version_output: str) -> int | None:
    """Return the major version from `java -version` output (`"17.0.15"` → 17, `"1.8.0"` → 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        return int(match.group(2))
    return major


def check_java(min_major: int = MIN_JAVA_MAJOR) -> int:
    """Return the installed Java major version.

    Raises:
        RuntimeError: no `java` on PATH/JAVA_HOME, or its version is below `min_major`.
    """
    java = _java_binary()
    if java is None:
        raise RuntimeError(
            f"Spark needs Java {min_major}+, but no `java` was found. {INSTALL_HINT}"
        )
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    major = parse_java_major(result.stderr + result.stdout)
    if major is None:
        raise RuntimeError(
            f"Could not read the version of {java}: {result.stderr!r}. {INSTALL_HINT}"
        )
    if major < min_major:
        raise RuntimeError(
            f"Spark needs Java {min_major}+, but {java} is Java {major}. {INSTALL_HINT}"
        )
    return major


if __name__ == "__main__":
    try:
        print(f"java: version {check_java()} OK")
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
