"""``/v1/documents``: upload files to ingest, list, show and delete documents."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import APIRouter, Depends, File, HTTPException, Path, Response, UploadFile, status
from fastapi.responses import JSONResponse

from rag_llm.api.dependencies import rag_service
from rag_llm.api.schemas import DocumentOut, ErrorOut, IngestOut, ValidationErrorOut

if TYPE_CHECKING:
    from rag_llm.rag import RagService

__all__ = ["router"]

_MAX_NAME: Final = 512
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ErrorOut, "description": "no such document"}}
DocumentId = Annotated[str, Path(min_length=1, max_length=128,
                                 description="the id `GET /v1/documents` lists")]
Service = Annotated["RagService", Depends(rag_service)]

router = APIRouter(prefix="/v1/documents", tags=["documents"])
# FastAPI refuses to define a file-upload route without python-multipart (the rag extra);
# without it the rest of the app still serves.
_UPLOADS: Final = importlib.util.find_spec("python_multipart") is not None


def _name(upload: UploadFile, position: int) -> str:
    name = (upload.filename or "").replace("\\", "/").strip().lstrip("/")
    if not name or len(name) > _MAX_NAME:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"files[{position}] needs a file name of 1 to {_MAX_NAME} "
                            "characters; its suffix picks the format")
    if _CONTROL.search(name):  # a NUL or line break in a label breaks logs and terminals
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"files[{position}] needs a file name without control characters")
    return name


async def ingest_documents(
    service: Service,
    files: Annotated[list[UploadFile], File(description="text, Markdown, HTML or PDF files; "
                                                        "the name identifies the document")],
) -> IngestOut | JSONResponse:
    """Ingest uploaded files. Unchanged files are skipped, changed ones replace their chunks,
    and a file that cannot be parsed is listed under ``failures`` while the rest are stored."""
    contents = [(_name(upload, i), await upload.read()) for i, upload in enumerate(files)]
    report = await service.ingest_files(contents)
    body = IngestOut(documents=[asdict(d) for d in report.documents],  # type: ignore[misc]
                     failures=[asdict(f) for f in report.failures],  # type: ignore[misc]
                     reembedded=report.reembedded)
    if report.failures and not report.documents:
        return JSONResponse({"detail": "no file could be ingested",
                             **body.model_dump()}, status_code=422)
    return body


if _UPLOADS:
    router.post("", response_model=IngestOut, responses={
        413: {"model": ErrorOut, "description": "the upload is over the size limit"},
        422: {"model": ValidationErrorOut, "description": "no file could be ingested"},
    })(ingest_documents)


@router.get("", response_model=list[DocumentOut])
async def list_documents(service: Service) -> list[DocumentOut]:
    """Every stored document, by source."""
    return [DocumentOut(**asdict(d)) for d in await service.documents()]


@router.get("/{document_id}", response_model=DocumentOut, responses=_NOT_FOUND)
async def get_document(document_id: DocumentId, service: Service) -> DocumentOut:
    """One stored document."""
    document = await service.document(document_id)
    if document is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document with id {document_id!r}")
    return DocumentOut(**asdict(document))


@router.delete("/{document_id}", status_code=204, response_class=Response,
               responses=_NOT_FOUND)
async def delete_document(document_id: DocumentId, service: Service) -> Response:
    """Remove a document and its chunks."""
    if not await service.delete(document_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document with id {document_id!r}")
    return Response(status_code=204)
