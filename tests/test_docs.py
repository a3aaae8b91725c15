"""The documentation site (``docs/mkdocs.yml``, pages under ``docs/pages/``) builds with
``mkdocs build --strict`` (never with ``-q``: quiet hides the warnings strict counts): a broken link between pages, a link to a missing anchor or a
page outside the navigation fails the suite. The README stays a first screen."""

from __future__ import annotations

import re
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def test_docs_build_strictly(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                          str(ROOT / "docs" / "mkdocs.yml"), "-d", str(site)],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (site / "index.html").is_file()
    assert (site / "numerics" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is a real check: the same site with one link to a missing
    anchor does not build."""
    docs = tmp_path / "docs"
    pages = docs / "pages"
    pages.mkdir(parents=True)
    cfg = (ROOT / "docs" / "mkdocs.yml").read_text()
    cfg = re.sub(r"(?ms)^nav:.*", "nav:\n  - Home: index.md\n  - Other: other.md\n", cfg)
    (docs / "mkdocs.yml").write_text(cfg.replace("site_dir: ../.site", f"site_dir: {tmp_path / 'site'}"))
    (pages / "index.md").write_text("# Home\n\nSee [the rule](other.md#no-such-section).\n")
    (pages / "other.md").write_text("# Other\n\n## A section\n")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(docs / "mkdocs.yml")],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode != 0
    assert "no-such-section" in out.stdout + out.stderr


def test_readme_links_resolve_and_it_stays_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).is_file(), target


def test_docs_tell_what_kma_is_not_how_it_was_built():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs" / "pages").glob("*.md"))]:
        hits = re.findall(r"\bissue \d+|\bissue's\b", page.read_text(), flags=re.I)
        assert hits == [], f"{page.name}: {hits}"


def test_the_site_home_is_the_readme():
    """``docs/pages/index.md`` is the README with its links made relative to the site."""
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "pages" / "index.md").read_text() == readme.replace("](docs/pages/", "](")
