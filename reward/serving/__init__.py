"""Serving a reward model over HTTP with dynamic batching (``rlkit serve-reward``).

protocol.py: the POST /score body and how validated requests are scored; batcher.py: the asyncio queue and
the worker thread; server.py: the FastAPI app, uvicorn, settings, and a background-thread server for tests.
"""

from reward.serving.batcher import RewardService, ServiceStats
from reward.serving.protocol import ApiError, ScoreRequest, parse_score_request, score_requests
from reward.serving.server import BackgroundServer, ServeSettings, create_app, serve

__all__ = ["ApiError", "BackgroundServer", "RewardService", "ScoreRequest", "ServeSettings", "ServiceStats",
           "create_app", "parse_score_request", "score_requests", "serve"]
