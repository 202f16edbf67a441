"""Settings of ``sherlock serve``: the request limits and the server's options (no KServe import:
the command line reads them before KServe parses ``sys.argv``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sherlock.config import ConfigError, help_field

OPENAI_PREFIX = os.environ.get("KSERVE_OPENAI_ROUTE_PREFIX", "/openai")  # KServe's variable and default


@dataclass(kw_only=True)
class Limits:
    """Request limits: a request past one is a 400 (413 for the body) naming it; pending work past
    ``max_pending_*`` is a 429 with Retry-After; a request past ``request_timeout_s`` is a 504.
    """

    max_body_bytes: int = help_field(32 * 2**20, "largest request body (413 past it)")
    max_image_bytes: int = help_field(8 * 2**20, "largest encoded image")
    max_image_pixels: int = help_field(2048 * 2048, "largest image, width x height")
    max_request_pixels: int = help_field(4 * 2048 * 2048, "pixels of all the images of one request")
    max_pending_pixels: int = help_field(16 * 2048 * 2048, "pixels admitted and not yet answered (429 past it)")
    max_pending_instances: int = help_field(256, "instances admitted and not yet answered (429 past it)")
    max_question_chars: int = help_field(4000, "longest question")
    max_rounds: int = help_field(3, "most self-correction rounds")
    max_new_tokens: int = help_field(1024, "most new tokens per round")
    max_instances: int = help_field(64, "most instances per request")
    request_timeout_s: float = help_field(300.0, "a request's deadline, queueing included (504 past it)")


@dataclass(kw_only=True)
class ServeConfig(Limits):
    """``sherlock serve``: the checkpoint, where to listen, batching, the OpenAI route prefix and the limits."""

    model: str = help_field(help="checkpoint path, s3:// URI or models:/NAME@ALIAS")
    name: str = help_field("sherlock", "model name in the URLs")
    host: str = help_field("127.0.0.1", "interface to listen on (0.0.0.0: every interface, as in a pod)")
    http_port: int = help_field(8080, "HTTP port")
    max_batch_size: int = help_field(8, "queries answered by one generate call")
    batch_wait_ms: float = help_field(10.0, "how long a batch waits to fill")
    openai_route_prefix: str = help_field(OPENAI_PREFIX, "prefix of PREFIX/v1/chat/completions and "
                                                         "PREFIX/v1/models ('' serves /v1/chat/completions)")
    token_file: str = help_field("", "file holding a bearer token every request but the health probes must send "
                                     "(Authorization: Bearer TOKEN); '' serves without one (auth in the mesh)")

    def __post_init__(self) -> None:
        if self.openai_route_prefix and not self.openai_route_prefix.startswith("/"):
            self.openai_route_prefix = "/" + self.openai_route_prefix
        self.openai_route_prefix = self.openai_route_prefix.rstrip("/")
        if self.token_file:
            self.token()
        bad = [f"{name}={value}" for name, value in vars(self).items()
               if (name.startswith("max_") or name == "request_timeout_s") and value <= 0]
        if bad or self.batch_wait_ms < 0 or not 0 <= self.http_port < 65536:
            raise ConfigError(f"need positive limits ({', '.join(bad) or 'ok'}), batch_wait_ms >= 0 and "
                              f"http_port in [0, 65535] (0: any free port), got {self.batch_wait_ms} and "
                              f"{self.http_port}")

    def token(self) -> str:
        """The bearer token of :attr:`token_file` (whitespace stripped); an empty or unreadable file is refused."""
        try:
            token = open(self.token_file, encoding="utf-8").read().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read token_file {self.token_file}: {error}") from None
        if len(token) < 16:
            raise ConfigError(f"token_file {self.token_file} holds {len(token)} characters; a token needs 16 or more")
        return token
