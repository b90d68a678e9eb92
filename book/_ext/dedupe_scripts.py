"""Drop duplicate <script> entries from each page.

sphinx-thebe's `env-before-read-docs` hook can run more than once in a Jupyter Book build and then adds its inline
`const THEBE_JS_URL = ...` script twice, which every browser reports as a SyntaxError. The browser test of the
book fails on any JavaScript error, so pages are deduplicated here.
"""

from __future__ import annotations


def _key(js: object) -> tuple:
    attrs = getattr(js, "attributes", {}) or {}
    return str(getattr(js, "filename", None) or ""), tuple(sorted((k, str(v)) for k, v in attrs.items()))


def dedupe(app, pagename, templatename, context, doctree) -> None:  # noqa: ANN001 - Sphinx event signature
    seen, kept = set(), []
    for js in context.get("script_files", []):
        if _key(js) not in seen:
            seen.add(_key(js))
            kept.append(js)
    context["script_files"] = kept


def setup(app):  # noqa: ANN001, ANN201
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
