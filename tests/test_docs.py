"""The docs run as written: every ```python block of README.md and docs/*.md is executed (by mktestdocs),
and every relative link points at a file that exists.

Each block runs on its own, in a fresh namespace (mktestdocs' `check_md_file` without `memory`), so a
block that leans on a name from an earlier block fails like one whose API went stale. Where it runs:

- in this process, by default (one interpreter for all the pages: jax and psec_jax are imported once);
- in one fresh interpreter with `XLA_FLAGS=--xla_force_host_platform_device_count=8`, when the block
  sets that flag itself: the flag only counts before jax is first imported, and this process already has;
- only under `make test-all` (the `slow` marker), when the line before its fence is
  `<!-- docs-test: slow -->` (a block that compiles a simulator).

Shell blocks (```sh, ```bash) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mktestdocs
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SLOW_MARKER = "<!-- docs-test: slow -->"
DEVICE_FLAG = "--xla_force_host_platform_device_count"
# a python block, with the slow marker on the line before it if there is one
BLOCK = re.compile(r"^(?P<marker><!-- docs-test: slow -->\n)?```python\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
FENCE = re.compile(r"^[ \t]*```(?P<info>.*)$", re.M)
LANGUAGES = {"python", "sh", "bash", "text", ""}  # fence info strings the pages may use ("" also closes)


def kind(block: re.Match) -> str:
    if block["marker"]:
        return "slow"
    return "devices" if DEVICE_FLAG in block["code"] else "default"


def only(text: str, which: str) -> str:
    """The page with every python block of another kind than `which` cut out."""
    return BLOCK.sub(lambda m: m[0] if kind(m) == which else "", text)


def pages_with(which: str) -> list[Path]:
    return [p for p in PAGES if any(kind(m) == which for m in BLOCK.finditer(p.read_text()))]


def write_blocks(pages: list[Path], which: str, directory: Path) -> Path:
    """One markdown file with the `which` blocks of `pages`, for mktestdocs."""
    out = directory / f"{which}.md"
    out.write_text("\n".join(only(p.read_text(), which) for p in pages))
    return out


def run_fresh(page: Path, cwd: Path) -> subprocess.CompletedProcess:
    """mktestdocs on `page` in a new interpreter with 8 emulated CPU devices."""
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}=8".strip()}
    return subprocess.run(
        [sys.executable, "-c", "import sys, mktestdocs; mktestdocs.check_md_file(sys.argv[1])", str(page)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("page", pages_with("default"), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the checkout
    mktestdocs.check_md_file(write_blocks([page], "default", tmp_path))


def test_multidevice_blocks_run_in_a_fresh_interpreter_with_8_devices(tmp_path):
    pages = pages_with("devices")
    assert ROOT / "docs" / "parallel.md" in pages and ROOT / "README.md" in pages
    result = run_fresh(write_blocks(pages, "devices", tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with("slow"), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_slow_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mktestdocs.check_md_file(write_blocks([page], "slow", tmp_path))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_python_block_is_run(page):
    text = page.read_text()
    infos = [m["info"].strip() for m in FENCE.finditer(text)]
    assert set(infos) <= LANGUAGES, f"fences other than {sorted(LANGUAGES)}: {sorted(set(infos) - LANGUAGES)}"
    assert len(infos) % 2 == 0, "a fence is not closed"
    # the blocks this file finds are the ones mktestdocs runs, and every one is of exactly one kind
    blocks = list(BLOCK.finditer(text))
    assert len(blocks) == infos[::2].count("python") == len(mktestdocs.grab_code_blocks(text, lang="python"))
    assert sum(len(BLOCK.findall(only(text, k))) for k in ("default", "devices", "slow")) == len(blocks)
    markers = len(re.findall(f"^{re.escape(SLOW_MARKER)}$", text, re.M))
    assert markers == sum(kind(m) == "slow" for m in blocks), "a slow marker not right above a python block"


STALE_PAGE = """# A page

```python
x = 1
```

```python
import jax.numpy as jnp

y = jnp.asarray(x) + 1  # x is the previous block's: a block must stand alone
```
"""


def test_a_stale_block_fails(tmp_path):
    page = tmp_path / "stale.md"
    page.write_text(STALE_PAGE)
    with pytest.raises(NameError, match="'x' is not defined"):
        mktestdocs.check_md_file(write_blocks([page], "default", tmp_path))
    flag = f'import os\n\nos.environ["XLA_FLAGS"] = "{DEVICE_FLAG}=8"\nimport jax'
    page.write_text(STALE_PAGE.replace("import jax", flag))  # the same page, its second block on 8 devices
    assert [kind(m) for m in BLOCK.finditer(page.read_text())] == ["default", "devices"]
    result = run_fresh(write_blocks([page], "devices", tmp_path), tmp_path)
    assert result.returncode != 0 and "NameError: name 'x' is not defined" in result.stderr


LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+\s+(.*?)\s*$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_at_files_that_exist(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or ROOT not in (file, *file.parents):
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# There\n\n## A heading, here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-here) [web](https://example.org/x.md) "
        "[gone](missing.md) [no heading](there.md#nowhere)\n"
    )
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys.modules[__name__], "ROOT", tmp_path)
        expected = r"broken links \['missing.md', 'there.md#nowhere \(no such heading\)'\]"
        with pytest.raises(AssertionError, match=expected):
            test_relative_links_point_at_files_that_exist(page)
