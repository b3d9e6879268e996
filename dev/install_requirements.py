"""Install Odoo's pinned requirements into the running virtualenv, coping with pins that do not build.

Odoo pins versions for Debian/Ubuntu system Python; some of those releases ship no wheel for the
Python in use and no longer build from source (cbor2 5.4.2 on Python 3.11). We install the file as
it is; when pip fails on one requirement, that pin alone is relaxed — first to the same minor
series (``~=X.Y``), then to any version — and the install is retried. Every relaxation is printed.
"""

import re
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement


def _pip_install(lines):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-r", handle.name],
        capture_output=True, text=True, check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _failing_project(output):
    """The requirement pip was working on when it failed (its last 'Collecting' line)."""
    names = re.findall(r"^Collecting ([A-Za-z0-9_.\-]+)", output, re.M)
    failed = re.findall(r"Failed (?:to build|building wheel for) ([A-Za-z0-9_.\-]+)", output)
    candidates = failed or names
    return candidates[-1].lower().replace("_", "-") if candidates else None


def main(path):
    with open(path, encoding="utf-8") as handle:
        lines = [line.split("#", 1)[0].strip() for line in handle]
    lines = [line for line in lines if line]
    relaxed = {}
    for _attempt in range(8):
        rc, output = _pip_install(lines)
        if rc == 0:
            for name, how in relaxed.items():
                print(f"note: Odoo pin for {name} did not build here; installed {how} instead")
            return 0
        name = _failing_project(output)
        if not name:
            sys.stderr.write(output)
            return 1
        for index, line in enumerate(lines):
            req = Requirement(line)
            if req.name.lower().replace("_", "-") != name:
                continue
            if req.marker and not req.marker.evaluate():
                continue
            pinned = [spec.version for spec in req.specifier if spec.operator == "=="]
            marker = f" ; {req.marker}" if req.marker else ""
            if pinned and relaxed.get(name) is None:
                series = ".".join(pinned[0].split(".")[:2])
                lines[index] = f"{req.name}~={series}{marker}"
                relaxed[name] = f"{req.name}~={series}"
            elif relaxed.get(name, "").endswith("(latest)"):
                sys.stderr.write(output)
                return 1
            else:
                lines[index] = f"{req.name}{marker}"
                relaxed[name] = f"{req.name} (latest)"
            break
        else:
            sys.stderr.write(output)
            return 1
    sys.stderr.write(output)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
