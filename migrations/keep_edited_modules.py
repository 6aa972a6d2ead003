"""After `copier update`: put back mixin and kit modules the update deleted although the person
had edited them, and say so.

Copier deletes every file the new answers no longer render, edited or not. That happens when a
variant switch (or a mixin answer) drops a mixin or a kit. An unedited copy can go; an edited one
is the person's work, so it is restored from git and reported, for them to move or delete.

Run in the node's directory (a git work tree, clean before the update) with the template
checkout and the template commit the node was at (`VERSION_FROM`) as arguments. Written by hand:
no library knows which of Copier's deletions were edited copies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import PurePosixPath

# Where the verbatim modules live in a node, and where they come from in the template.
MODULE_DIRS = {"mixins": "mixins", "integrations": "integrations"}


def git(*args: str, cwd: str = ".") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def pristine(template_root: str, version_from: str, path: PurePosixPath) -> str | None:
    """The module as the old template version wrote it into this node, if it is one."""
    parts = path.parts
    if len(parts) < 4 or parts[0] != "src" or parts[2] not in MODULE_DIRS:
        return None
    if parts[3:] == ("__init__.py",):
        # The template writes the folder's own __init__ (it copies no module there), so no
        # template module is its original.
        return None
    node = parts[1]
    # A kit that is a package has its modules a level deeper (integrations/http/client.py).
    source = "/".join((MODULE_DIRS[parts[2]], *parts[3:]))
    shown = git("show", f"{version_from}:{source}", cwd=template_root)
    if shown.returncode != 0:
        return None
    # Kits import the node's mixins and other kits: the copy rewrote those import prefixes.
    return shown.stdout.replace("from mixins.", f"from {node}.mixins.").replace(
        "from integrations.", f"from {node}.integrations."
    )


def main(template_root: str, version_from: str) -> int:
    deleted = git("diff", "--name-only", "--diff-filter=D", "HEAD").stdout.split()
    kept = []
    for name in deleted:
        path = PurePosixPath(name)
        original = pristine(template_root, version_from, path)
        if original is None:
            continue
        committed = git("show", f"HEAD:{name}").stdout
        if committed != original:
            git("checkout", "HEAD", "--", name)
            kept.append(name)
    for name in kept:
        print(
            f"kept {name}: the new answers no longer use it, but you edited it; "
            "move what you need and delete it"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
