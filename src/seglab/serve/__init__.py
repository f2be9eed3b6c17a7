"""``seglab serve``: one model behind an HTTP API and an upload page (FastAPI run by uvicorn; the optional
``serve`` extra). ``create_app`` builds the app around a loaded model, ``run`` serves it."""
from .app import create_app, run

__all__ = ["create_app", "run"]
