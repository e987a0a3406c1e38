"""Serving a reward model over HTTP with dynamic batching (``rlkit serve-reward``); see server.py."""

from reward.serving.server import (ApiError, BackgroundServer, RewardService, ScoreRequest, ServeSettings,
                                   ServiceStats, create_app, parse_score_request, score_requests, serve)

__all__ = ["ApiError", "BackgroundServer", "RewardService", "ScoreRequest", "ServeSettings", "ServiceStats",
           "create_app", "parse_score_request", "score_requests", "serve"]
