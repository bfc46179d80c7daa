"""Every ```python block of the user docs runs as written.

The blocks of one page run in order in one namespace (a page is one
script), in a fresh interpreter so that one page cannot lean on another's
state; README.md's "What it looks like" example runs the same way.
"""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["docs/concepts.md", "docs/guide.md", "README.md"]


def _blocks(path):
    text = open(os.path.join(REPO, path)).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path):
    blocks = _blocks(page)
    assert blocks, "%s has no python example" % page
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                          text=True, timeout=280, env=env)
    assert proc.returncode == 0, "%s failed:\n%s" % (page, proc.stderr[-3000:])
