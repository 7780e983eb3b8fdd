"""`GET /runbook`: the operations guide as one HTML page on the operator listener, fetched over HTTP
from the daemon's own apps. Every alert's `runbook_url` anchor lands on a heading of that page, the
ids are the ones GitHub gives the same headings (so the anchor works in both places), and the page
needs neither the admin token nor the internet."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from checks.registry import CHECK_NAMES
from tests.healer.listeners import Answer, Listeners, get

REPO = Path(__file__).resolve().parents[2]
RULES = sorted((REPO / "dashboards" / "prometheus").glob("*.yml"))
CHECK_LABEL = re.compile(r"\{\{\s*\$labels\.check\s*\}\}")


class Page(HTMLParser):
    """The ids, links and elements of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))


@pytest.fixture(scope="module")
def runbook(listeners: Listeners) -> Answer:
    return get(listeners.operator + "/runbook")


def alert_anchors() -> list[tuple[str, str]]:
    """(alert, anchor) for every alert of every rules file; a `{{ $labels.check }}` in an anchor
    stands for every check the alert can name."""
    found = []
    for path in RULES:
        document = yaml.safe_load(path.read_text()) or {}
        for group in document.get("groups", []) if isinstance(document, dict) else []:
            for rule in group.get("rules", []):
                if "alert" not in rule:
                    continue
                url = rule.get("annotations", {}).get("runbook_url", "")
                assert "#" in url, f"{path.name}: {rule['alert']} has no runbook_url anchor: {url!r}"
                anchor = url.rsplit("#", 1)[1]
                names = CHECK_NAMES if CHECK_LABEL.search(anchor) else ("",)
                found += [(rule["alert"], CHECK_LABEL.sub(name, anchor)) for name in names]
    return found


def github_slug(heading: str) -> str:
    """GitHub's heading id (github-slugger): lowercased; every character that is not a letter, a
    mark, a decimal or letter number, a connector (`_`), a space or `-` dropped; spaces to `-`."""
    kept = (c for c in heading.lower()
            if c in " -" or c.isalpha() or unicodedata.category(c)[0] == "M"
            or unicodedata.category(c) in ("Nd", "Nl", "Pc"))
    return "".join(kept).replace(" ", "-")


def github_ids(markdown: str) -> list[str]:
    """The ids GitHub gives the guide's headings, in order (the second of a slug gets `-1`)."""
    seen: Counter[str] = Counter()
    ids = []
    in_fence = False
    for line in markdown.splitlines():
        in_fence ^= line.startswith("```")
        heading = re.match(r"#{1,6} (.*)", line)
        if in_fence or heading is None:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).replace("`", "").replace("*", "")
        slug = github_slug(text.strip())
        ids.append(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return ids


def test_every_alerts_runbook_anchor_is_a_heading_on_the_runbook_page(runbook: Answer) -> None:
    anchors = alert_anchors()
    ids = set(Page(runbook.text).ids)

    assert len({alert for alert, _ in anchors}) >= 15  # the rules were found and read
    missing = sorted({f"{alert} -> #{anchor}" for alert, anchor in anchors if anchor not in ids})
    assert missing == [], "alerts whose runbook anchor has no heading in docs/operations.md"


def test_heading_ids_are_the_ones_github_gives_the_same_headings(runbook: Answer) -> None:
    guide = (REPO / "docs" / "operations.md").read_text()
    page = Page(runbook.text)

    assert page.ids == github_ids(guide)


def test_every_link_on_the_page_leads_somewhere_that_exists(runbook: Answer) -> None:
    page = Page(runbook.text)
    ids = set(page.ids)

    broken = [link for link in page.links if link.startswith("#") and link[1:] not in ids]
    relative = [link for link in page.links if not link.startswith(("#", "https://", "http://"))]
    assert broken == []
    assert relative == []  # a link to another file of the repository would be a 404 here


def test_the_runbook_is_one_self_contained_page_without_the_admin_token(listeners: Listeners,
                                                                         runbook: Answer) -> None:
    page = Page(runbook.text)

    assert runbook.status == 200 and runbook.headers["content-type"] == "text/html; charset=utf-8"
    assert "<style>" in runbook.text and 'name="viewport"' in runbook.text  # readable on a phone
    assert not page.tags & {"script", "link", "img", "iframe"}  # nothing loaded from elsewhere
    assert "default-src 'none'" in runbook.headers["content-security-policy"]
    assert "<h3 id=\"healerdown\"" in runbook.text and "<table>" in runbook.text
    head = get(listeners.operator + "/runbook", method="HEAD")
    assert (head.status, head.body) == (200, b"")


def test_the_public_listener_has_no_runbook(listeners: Listeners) -> None:
    assert get(listeners.public + "/runbook").status == 404


def test_the_runbook_is_not_an_operation_of_the_api(listeners: Listeners) -> None:
    schema = get(listeners.operator + "/openapi.json")

    assert "/runbook" not in schema.text and "/docs" not in schema.text
