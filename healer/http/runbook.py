"""The operations guide, docs/operations.md, as one HTML page: `GET /runbook` on the operator listener.

Alertmanager's `runbook_url` links end in `#<alert name, lowercased>`: the page gives every heading
the id GitHub gives it (the anchors plugin's slugs: lowercase, spaces to `-`, punctuation dropped),
so one anchor works on GitHub and here. The guide ships inside the package (`healer/docs` is a
link to the repository's `docs/`; the wheel holds the files), so the page describes the version
that serves it, wherever it is installed, and works without the internet: one HTML file with its
stylesheet inline. No admin token: on-call people open it from an alert, and the operator
listener is on a private network.
"""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from markdown_it import MarkdownIt
from mdit_py_plugins.anchors import anchors_plugin

from healer import __version__

GUIDE = "operations.md"
# Nothing on the page runs or loads from elsewhere; the guide is not raw HTML either (html=False).
HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 0 auto; padding: 1rem; color: #1f2328; }
h1, h2, h3 { line-height: 1.25; margin-top: 1.5em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
:target { background: #fff8c5; }
a { color: #0969da; }
a.header-anchor { visibility: hidden; text-decoration: none; margin-left: .25em; }
h1:hover a.header-anchor, h2:hover a.header-anchor, h3:hover a.header-anchor { visibility: visible; }
code, pre { font: .875em/1.45 ui-monospace, monospace; background: #f6f8fa; border-radius: 4px; }
code { padding: .1em .3em; overflow-wrap: break-word; }
pre { padding: .75em; overflow-x: auto; }
pre code { padding: 0; background: none; overflow-wrap: normal; }
table { display: block; overflow-x: auto; border-collapse: collapse; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; vertical-align: top; }
footer { color: #59636e; font-size: .875em; margin-top: 3em; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>healer: operations guide</title>
<style>{style}</style>
</head>
<body>
{body}
<footer>The operations guide of healer {version}, the version serving this page.</footer>
</body>
</html>
"""


def guide_markdown() -> str:
    return (files("healer") / "docs" / GUIDE).read_text(encoding="utf-8")


def render(markdown: str) -> str:
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    parser.use(anchors_plugin, min_level=1, max_level=6, permalink=True, permalinkSymbol="#")
    return PAGE.format(style=STYLE, body=parser.render(markdown), version=html.escape(__version__))


@cache
def guide_page() -> str:
    return render(guide_markdown())


def runbook_routes(app: FastAPI) -> None:
    # Not in the OpenAPI document: a page for people, like /docs, not an API for clients.
    @app.get("/runbook", response_class=HTMLResponse, include_in_schema=False)
    def runbook() -> HTMLResponse:
        return HTMLResponse(guide_page(), headers=HEADERS)
