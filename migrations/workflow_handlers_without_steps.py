"""After `copier update`: workflow handlers take the request and the resources, no `steps`.

Earlier template versions passed every orchestrator handler an in-memory `Steps`; a workflow
node's engine records its steps in PostgreSQL, so its handlers dropped it (`del steps`), and the
template now calls them without it and no longer writes orchestration.py into such nodes. The
update leaves handlers.py alone (it is the person's), so this removes the three lines the
template wrote there for `steps`, where they are still as written, and names what is left to
change by hand. Doing nothing when the lines are gone makes it safe to run on every update.

Run in the node's directory with the node's package name as its argument. Written by hand: an
edit of three known lines needs no refactoring library.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Code that still uses the argument or the class: an annotation, a call, an import, a method.
STILL_USED = re.compile(r":\s*Steps\b|\bSteps\(|\borchestration\b|\bsteps\.")


def main(package: str) -> int:
    source = Path("src") / package
    handlers = source / "handlers.py"
    workflow = (source / "integrations" / "workflow.py").is_file()
    if not workflow or (source / "orchestration.py").exists() or not handlers.is_file():
        return 0
    text = handlers.read_text(encoding="utf-8")
    written = [
        f"from {package}.orchestration import Steps\n",
        "    steps: Steps,\n",
        "    del steps  # the workflow engine records the steps, durably\n",
    ]
    if written[0] not in text:
        return 0
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if line not in written]
    handlers.write_text("".join(kept), encoding="utf-8")
    print(f"{handlers}: workflow handlers no longer take `steps`; removed the lines for it")
    if STILL_USED.search("".join(kept)):
        print(
            f"{handlers}: still names `steps`/`Steps`: the node now calls each handler as "
            "handler(request, resources); take the steps argument out of your own code"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
