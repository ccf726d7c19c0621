"""Dependencies shared by the routers.

They are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its
thread pool, which costs every request a round trip through a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.admission import Upload
from app.core.service import InferenceService

UPLOAD_KEY = "catdog.upload"  # scope key: the Upload the gate middleware opened


async def get_service(request: Request) -> InferenceService:
    """The app's inference service (built by ``create_app``, started by the lifespan)."""
    return request.app.state.service


async def get_upload(request: Request) -> Upload | None:
    """This request's upload, counted as on its way since its first byte (see middleware)."""
    return request.scope.get(UPLOAD_KEY)


ServiceDep = Annotated[InferenceService, Depends(get_service)]
UploadDep = Annotated[Upload | None, Depends(get_upload)]
