"""`pip check` of the environment `make setup` built, against the conflicts we accept on purpose.

torchrec is installed with `--no-deps` (see `torchrec.txt`), so `pip check` reports two
requirements of torchrec's own metadata that we deliberately do not meet:

* `fbgemm-gpu` (the CUDA wheel): we install `fbgemm-gpu-cpu` of the same release, whose module
  is the same `fbgemm_gpu`; the CUDA wheel would overwrite it and break `import fbgemm_gpu`;
* `torchmetrics==1.0.3`: torchrec 1.8 runs with the `torchmetrics` that `base.txt` pins (the
  test suite runs with it), and Lightning 2.6 needs the newer one.

Those lines are listed in `KNOWN` and printed as a note; anything else `pip check` reports is an
error (exit 1), so a broken environment is never hidden behind the known exceptions.

    python requirements/pip_check.py        # run by `make setup` with the venv's Python
"""

from __future__ import annotations

import re
import subprocess
import sys

#: Conflicts accepted on purpose (see the module docstring), as regular expressions over one
#: line of `pip check`'s output.
KNOWN = (
    re.compile(r"^torchrec \S+ requires fbgemm-gpu, which is not installed\.$"),
    re.compile(
        r"^torchrec \S+ has requirement torchmetrics==\S+, but you have torchmetrics \S+\.$"
    ),
)


def unexpected(report: str) -> list[str]:
    """The lines of a `pip check` report that are not known exceptions (`KNOWN`)."""
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    lines = [line for line in lines if line != "No broken requirements found."]
    return [line for line in lines if not any(pattern.match(line) for pattern in KNOWN)]


def main() -> int:
    """Run `pip check` with this interpreter; 0 when it reports nothing beyond `KNOWN`."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    report = result.stdout + result.stderr
    others = unexpected(report)
    if others:
        print("error: pip check found broken requirements:", file=sys.stderr)
        for line in others:
            print(f"  {line}", file=sys.stderr)
        return 1
    known = len([line for line in report.splitlines() if line.strip()]) - len(others)
    accepted = " (torchrec's fbgemm-gpu and torchmetrics pins, accepted: requirements/pip_check.py)"
    print(f"pip check: OK{accepted if known else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
