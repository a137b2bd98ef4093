"""The README and docs/ quote the committed results and link to files that exist."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_generated_tables_agree_with_the_committed_json():
    done = subprocess.run([sys.executable, "-m", "benchmarks.summarize", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_stale_table_is_caught(tmp_path, monkeypatch):
    from benchmarks import summarize

    page = tmp_path / "page.md"
    page.write_text("text\n<!-- summarize:tuning -->\n| an old table |\n<!-- /summarize:tuning -->\n")
    monkeypatch.setattr(summarize, "PAGES", [page])
    monkeypatch.setattr(summarize, "ROOT", tmp_path)
    assert summarize.main(["--check"]) == 1
    assert summarize.main(["--write"]) == 0 and summarize.main(["--check"]) == 0
    assert "| an old table |" not in page.read_text() and "tuning.json" in page.read_text()


def test_readme_is_short_and_every_results_page_is_generated():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200
    for page in (ROOT / "docs" / "results").glob("*.md"):
        assert "<!-- summarize:" in page.read_text(), f"{page.name} quotes no generated table"


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
