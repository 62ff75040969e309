"""``nextpose serve``: poses over HTTP, the crops of concurrent requests batched together
(:class:`Batcher`), with a web page at ``/`` (:func:`create_app`, :func:`serve`). Needs
``pip install "nextpose[serve]"`` (FastAPI, uvicorn, python-multipart)."""

from .app import create_app, serve
from .batcher import Batcher

__all__ = ["Batcher", "create_app", "serve"]
