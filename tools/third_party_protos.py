"""Copy the Google protos iceOS imports from the installed googleapis-common-protos wheel.

They land in .build/third_party (git-ignored) so buf can resolve imports offline; the files are
never committed, and the wheel's version pins what the contracts compile against.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import google.api
import google.rpc

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".build" / "third_party"

FILES = {
    google.api: ["annotations.proto", "http.proto", "field_behavior.proto", "resource.proto",
                 "client.proto", "launch_stage.proto", "httpbody.proto"],
    google.rpc: ["status.proto", "error_details.proto", "code.proto"],
}


def main() -> int:
    for package, names in FILES.items():
        src_dir = Path(package.__path__[0])
        rel = Path(*package.__name__.split("."))
        (DEST / rel).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(src_dir / name, DEST / rel / name)
    print(f"third-party protos in {DEST.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
