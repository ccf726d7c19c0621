"""GET /: a small page to try the service in a browser (upload a photo, see the prediction).

The page is one self-contained file, ``app/static/index.html`` (inline CSS and JS, nothing
loaded from elsewhere); it is read once, at import. Its Content-Security-Policy lets it
talk to this server only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["page"])

INDEX_PATH = Path(__file__).resolve().parents[2] / "static" / "index.html"
INDEX_HTML = INDEX_PATH.read_text(encoding="utf-8")

#: Inline script and style only; images from the chosen file (blob:); requests to this origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'unsafe-inline'",
        "style-src 'unsafe-inline'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    """The upload page."""
    return HTMLResponse(INDEX_HTML, headers=HEADERS)
